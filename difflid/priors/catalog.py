"""Every published weight file difflid knows, by a short name, and fetching them (``tools/download.py``).

The names: each ADM preset whose checkpoint has a direct link (``ADM_CHECKPOINTS``: adm256_uncond, ...) goes to
``pretrained/`` (or ``directory``); the metrics' backbones (``lpips-alex``, ``lpips-vgg``, ``lpips-squeeze``,
``fid-inception``) and torchvision's VGG16 / ResNet50 files, which ``TimmFeatureExtractor`` finds by their
hash names, go to ``$TORCH_HOME/hub/checkpoints/``, where lpips, pytorch-fid and torchvision look.

Verification: torchvision's files by the SHA-256 prefix in their names (``published_hash``). OpenAI publishes no
hash or size for the ADM files, so those are checked by the server's Content-Length and by a strict structural
load (every tensor of the preset's UNet, with its shape, and nothing else; no weights are materialised), and their
computed SHA-256 is written beside them (``<file>.sha256``) so that a later copy can be checked.
"""
from dataclasses import dataclass
from pathlib import Path

import torch
from pytorch_fid.inception import FID_WEIGHTS_URL

from difflid.metrics.hub_weights import HUB_TIMEOUT, hub_checkpoint_path
from difflid.metrics.lpips_metric import BACKBONES
from difflid.priors.adm_unet_arch import ADM_CHECKPOINTS, ADMUNet, adm_flags
from difflid.priors.timm_features_arch import _torchvision_files
from difflid.utils.checkpoint_io import network_state, state_dict_problems
from difflid.utils.download import download_file, published_hash

__all__ = ['CATALOG', 'WeightFile', 'check_adm_structure', 'fetch', 'resolve_names']


@dataclass(frozen=True)
class WeightFile:
    """One published file: where it comes from, where it goes, how it is checked.

    Args:
        file: File name, the same on the publisher's host and on a mirror.
        url: The publisher's address.
        hub: Into the torch hub checkpoints folder (else into ``pretrained/`` or the given directory).
        adm_preset: For an ADM checkpoint, the preset whose UNet it must fit exactly.
        used_for: What needs it (shown by ``tools/download.py --list``).
    """

    file: str
    url: str
    hub: bool
    adm_preset: str | None = None
    used_for: str = ''

    def destination(self, directory: str | Path | None = None) -> Path:
        """Where the file goes: the torch hub cache for backbones, ``directory`` (default pretrained/) for ADM."""
        return hub_checkpoint_path(self.file) if self.hub else Path(directory or 'pretrained') / self.file


def _catalog() -> dict[str, WeightFile]:
    entries = {name: WeightFile(info['file'], info['url'], hub=False, adm_preset=name, used_for='ADM prior')
               for name, info in ADM_CHECKPOINTS.items()
               if info['url'] and info['url'].endswith(info['file'])}  # a direct link, not a Drive folder
    entries.update({f'lpips-{net}': WeightFile(file, url, hub=True, used_for=f'LPIPS ({net})')
                    for net, (file, url) in BACKBONES.items()})
    entries['fid-inception'] = WeightFile(FID_WEIGHTS_URL.rsplit('/', 1)[-1], FID_WEIGHTS_URL, hub=True,
                                          used_for='FID (pytorch-fid Inception-v3)')
    for model in ('vgg16', 'resnet50'):
        file, url = _torchvision_files(model)[0]  # IMAGENET1K_V1, the extractor's first choice
        entries[model] = WeightFile(file, url, hub=True, used_for=f'TimmFeatureExtractor ({model})')
    return entries


CATALOG: dict[str, WeightFile] = _catalog()


def resolve_names(names: list[str]) -> list[WeightFile]:
    """The catalogue entries of ``names``; ValueError listing the known names for an unknown one."""
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise ValueError(f'unknown weight file name {", ".join(map(repr, unknown))}; known: {", ".join(CATALOG)}')
    return [CATALOG[n] for n in names]


def check_adm_structure(preset: str, path: Path) -> None:
    """Raise ValueError unless ``path`` is a state dict that loads strictly into the ``preset`` UNet.

    The UNet is built on the meta device and the file memory-mapped (zip-format files), so a 2 GB checkpoint costs
    little RAM."""
    with torch.device('meta'):
        expected = ADMUNet(**adm_flags(preset)).state_dict()
    try:
        loaded = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception:  # mmap needs the zip format; a legacy-format file is read into memory instead
        try:
            loaded = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as err:  # unpickling errors have many types; all mean "not a plain state dict"
            first = str(err).strip().splitlines()[0] if str(err).strip() else ''  # torch's messages run to many lines
            raise ValueError(f'not a PyTorch state dict ({type(err).__name__}: {first})') from err
    state, _ = network_state(loaded)
    if state is None:
        raise ValueError(f'not a state dict of tensors (got {type(loaded).__name__})')
    problems = state_dict_problems(expected, {k.removeprefix('module.'): v for k, v in state.items()})
    if problems:
        raise ValueError(f'does not fit the {preset} UNet: ' + '; '.join(problems))


def fetch(entry: WeightFile, directory: str | Path | None = None, mirror: str | None = None,
          progress: bool = True) -> Path:
    """Download ``entry`` to its destination unless a file is already there; returns the path.

    Raises difflid.utils.download.DownloadError (OfflineError with ``DIFFLID_OFFLINE``)."""
    dest = entry.destination(directory)
    if dest.is_file():
        return dest
    verify = None
    if entry.adm_preset is not None:
        def verify(path: Path, preset: str = entry.adm_preset) -> None:
            check_adm_structure(preset, path)
    return download_file(entry.url, dest, mirror=mirror, hash_prefix=published_hash(entry.url),
                         verify=verify, write_sidecar=not entry.hub, timeout=HUB_TIMEOUT, progress=progress)
