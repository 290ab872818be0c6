"""DiffusersUNet2D: a diffusers ``UNet2DModel`` as a trainable ``network_g`` (``DiffusionPriorModel``).

``forward(x_t, t)`` returns the UNet's output tensor (ε̂), as ``ADMUNet`` does, so the prior trainer treats both
alike. The architecture is a dict of ``UNet2DModel`` keyword arguments (``config``) or the ``config.json`` of a
local ``save_pretrained`` folder (``diffusers``, whose weights are loaded too: fine-tune a published pixel-space
DDPM on your domain). The trained checkpoint loads into ``DiffusersUNetExtractor`` with the same ``config`` and
``checkpoint:``. diffusers is an optional dependency, imported when the network is built.
"""
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from difflid.priors.diffusers_unet_arch import import_diffusers, resolve_unet_folder

__all__ = ['DiffusersUNet2D']


@ARCH_REGISTRY.register()
class DiffusersUNet2D(nn.Module):
    """A ``UNet2DModel`` with the ``net(x_t, t) -> tensor`` call of difflid's diffusion networks.

    Args:
        config: ``UNet2DModel`` keyword arguments (e.g. sample_size, block_out_channels, down_block_types,
            up_block_types, layers_per_block); random initial weights.
        diffusers: Instead of ``config``: a local ``save_pretrained`` folder (or pipeline folder with ``unet/``)
            whose architecture and weights are the starting point. Never downloaded.
    """

    def __init__(self, config: dict | None = None, diffusers: str | None = None) -> None:
        super().__init__()
        if (config is None) == (diffusers is None):
            raise ValueError('DiffusersUNet2D: give exactly one of network_g.config (UNet2DModel arguments) and '
                             'network_g.diffusers (a save_pretrained folder)')
        library = import_diffusers()
        if config is not None:
            self.unet = library.UNet2DModel.from_config(dict(config))
        else:
            folder = resolve_unet_folder(diffusers, 'DiffusersUNet2D: network_g.diffusers')
            self.unet = library.UNet2DModel.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample
