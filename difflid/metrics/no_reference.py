"""No-reference image quality: scores of one image alone, for test sets without ground truth (RTTS, a user's photos).

NIQE is basicsr's ``calculate_niqe`` (registered by basicsr; its pristine-model parameters ship in basicsr's wheel,
so it runs offline): ``val.metrics: {niqe: {type: calculate_niqe, crop_border: 0, better: lower}}``. It fits a
Gaussian to features of 96x96 blocks, so an image needs at least two blocks (checked here, naming the image).

``pyiqa_metric`` is an optional extra (``pip install difflid[iqa]``): any metric of pyiqa (BRISQUE, MUSIQ, CLIP-IQA,
...) by name, ``{type: pyiqa_metric, metric: brisque, better: lower}``, its weights from pyiqa's own cache. pyiqa is
imported only here, so difflid works without it; a missing package or, offline, missing weights is one error
(``OptionError``: the tools print it as one ``error:`` line).
"""
import numpy as np
import torch
from basicsr.metrics import calculate_metric
from basicsr.utils.registry import METRIC_REGISTRY

from difflid.utils.errors import OptionError

__all__ = ['NO_REFERENCE_METRICS', 'check_no_reference_metrics', 'pyiqa_metric', 'score_no_reference']

NO_REFERENCE_METRICS = {'calculate_niqe', 'pyiqa_metric'}  # metric types that score an image without its GT
_NIQE_BLOCK = 96  # basicsr's niqe() block size; its covariance needs at least two blocks
_pyiqa_metrics: dict[tuple[str, str], torch.nn.Module] = {}  # built once per (metric, device)


def _import_pyiqa(where: str):
    try:
        import pyiqa
    except ImportError as err:
        raise OptionError(f'{where}: pyiqa_metric needs the pyiqa package, which is not installed; '
                          "install it with: pip install 'difflid[iqa]' (or pip install pyiqa), or use "
                          'type: calculate_niqe, which needs nothing more') from err
    return pyiqa


def check_no_reference_metrics(metric_opts: dict | None) -> None:
    """Fail at start-up, naming the option, when a pyiqa metric cannot run (pyiqa missing, unknown metric name)."""
    for name, opt in (metric_opts or {}).items():
        if opt.get('type') != 'pyiqa_metric':
            continue
        where = f'val.metrics.{name}'
        if not opt.get('metric'):
            raise OptionError(f"{where}: pyiqa_metric needs 'metric', a pyiqa metric name (e.g. brisque, musiq)")
        pyiqa = _import_pyiqa(where)
        known = pyiqa.list_models()
        if opt['metric'] not in known:
            raise OptionError(f"{where}.metric: pyiqa has no metric {opt['metric']!r}; it has: {known}")


def _pyiqa_model(metric: str, device: str) -> torch.nn.Module:
    if (metric, device) not in _pyiqa_metrics:
        pyiqa = _import_pyiqa(f'metric {metric!r}')
        try:
            _pyiqa_metrics[metric, device] = pyiqa.create_metric(metric, as_loss=False, device=torch.device(device))
        except OSError as err:  # huggingface_hub / requests errors when offline and the weights are not cached
            raise OptionError(f"pyiqa metric {metric!r}: its weights are not in pyiqa's cache and could not be "
                              f"fetched ({err}); run once with network access, or copy the weights into pyiqa's "
                              'cache (some are CC BY-NC-SA 4.0: see docs/evaluation.md)') from err
    return _pyiqa_metrics[metric, device]


@METRIC_REGISTRY.register()
def pyiqa_metric(img: np.ndarray, metric: str, device: str = 'cpu', better: str = 'higher') -> float:
    """One pyiqa no-reference score of a uint8 BGR HWC image (as basicsr's metrics take it).

    Args:
        metric: A no-reference metric of pyiqa (``pyiqa.list_models()``; its model cards say which are NR).
        device: Where the metric's network runs.
        better: 'lower' for BRISQUE/NIQE-like scores, 'higher' for MUSIQ/CLIP-IQA; read by the reports.
    """
    model = _pyiqa_model(metric, device)
    rgb = torch.from_numpy(np.ascontiguousarray(img[..., ::-1])).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        return float(model(rgb.to(device)).item())


def score_no_reference(metric_opt: dict, img8: np.ndarray, name: str, image: str) -> float:
    """One no-reference metric of one uint8 BGR image; an image too small for NIQE is an error naming it."""
    if metric_opt['type'] == 'calculate_niqe':
        crop = int(metric_opt.get('crop_border', 0))
        h, w = img8.shape[0] - 2 * crop, img8.shape[1] - 2 * crop
        if (h // _NIQE_BLOCK) * (w // _NIQE_BLOCK) < 2:
            raise OptionError(f'val.metrics.{name}: NIQE needs at least two {_NIQE_BLOCK}x{_NIQE_BLOCK} blocks '
                             f'(e.g. 96x192 pixels after crop_border), and image {image} is {h}x{w}')
    return float(calculate_metric({'img': img8}, dict(metric_opt)))
