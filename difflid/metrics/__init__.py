"""Metrics: basicsr does not scan for metric files, so each module is imported here by name."""
from .fid_metric import SET_METRICS, calculate_fid
from .float_metrics import FLOAT_METRICS, calculate_psnr_float, calculate_ssim_float, float_image
from .hub_weights import require_hub_file
from .lpips_metric import BACKBONES, calculate_lpips
from .no_reference import NO_REFERENCE_METRICS, pyiqa_metric

__all__ = ['FLOAT_METRICS', 'NO_REFERENCE_METRICS', 'SET_METRICS', 'calculate_fid', 'calculate_lpips',
           'calculate_psnr_float', 'calculate_ssim_float', 'float_image', 'pyiqa_metric', 'require_metric_weights']


def require_metric_weights(metric_opts: dict) -> None:
    """Fail at start-up, not after the first restored image, when a metric's backbone weights are missing."""
    for name, opt in (metric_opts or {}).items():
        if opt.get('type') == 'calculate_lpips':
            net = opt.get('net', 'alex')
            if net not in BACKBONES:
                raise ValueError(f'val.metrics.{name}.net must be one of {sorted(BACKBONES)}, got {net!r}')
            require_hub_file(*BACKBONES[net], used_for=f'metric {name!r} (LPIPS {net})')
        elif opt.get('type') == 'calculate_fid':
            from pytorch_fid.inception import FID_WEIGHTS_URL

            require_hub_file(FID_WEIGHTS_URL.rsplit('/', 1)[-1], FID_WEIGHTS_URL, used_for=f'metric {name!r} (FID)')
