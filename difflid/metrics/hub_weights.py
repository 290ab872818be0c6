"""Backbone weights for metrics live in the standard torch hub cache, where lpips and pytorch-fid look.

A missing file is fetched there (verified by the SHA-256 prefix in its name, bounded timeouts, resumable), as lpips
and pytorch-fid users expect; with ``DIFFLID_OFFLINE=1``, or when no network answers, the error says which file to
put where instead of hanging.
"""
from pathlib import Path

import torch

from difflid.utils.download import DownloadError, OfflineError, download_file, published_hash, source_url

__all__ = ['HUB_TIMEOUT', 'hub_checkpoint_path', 'require_hub_file']

HUB_TIMEOUT = 10.0  # seconds a connect or read may block: a firewalled host fails fast instead of hanging


def hub_checkpoint_path(file_name: str) -> Path:
    """``$TORCH_HOME/hub/checkpoints/<file_name>``, resolved at call time (TORCH_HOME may change)."""
    return Path(torch.hub.get_dir()) / 'checkpoints' / file_name


def require_hub_file(file_name: str, url: str, used_for: str, fetch: bool = True) -> Path:
    """Path of ``$TORCH_HOME/hub/checkpoints/<file_name>``, downloaded from ``url`` (or ``DIFFLID_MIRROR``) when
    absent and ``fetch``; FileNotFoundError saying what to fetch where when offline or the download fails."""
    path = hub_checkpoint_path(file_name)
    if path.is_file():
        return path
    reason = ''
    if fetch:
        try:
            return download_file(url, path, hash_prefix=published_hash(url), timeout=HUB_TIMEOUT)
        except OfflineError as err:
            reason = f' Not downloaded: {err}.'
        except DownloadError as err:
            reason = f' The download failed: {err}.'
    raise FileNotFoundError(f'{used_for} needs the backbone weights {path}, which are not there.{reason} Download '
                            f'{source_url(url)} to that path (or set TORCH_HOME to a folder whose hub/checkpoints/ '
                            'holds it; `python tools/download.py` fetches every file difflid knows).')
