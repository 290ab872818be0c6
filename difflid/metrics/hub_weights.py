"""Backbone weights for metrics come from the standard torch hub cache; nothing is downloaded."""
from pathlib import Path

import torch

__all__ = ['require_hub_file']


def require_hub_file(file_name: str, url: str, used_for: str) -> Path:
    """Path of ``$TORCH_HOME/hub/checkpoints/<file_name>``; FileNotFoundError saying what to fetch if absent."""
    path = Path(torch.hub.get_dir()) / 'checkpoints' / file_name
    if not path.is_file():
        raise FileNotFoundError(f'{used_for} needs the backbone weights {path}, which are not there. Download {url} '
                                f'to that path (or set TORCH_HOME to a folder whose hub/checkpoints/ holds it).')
    return path
