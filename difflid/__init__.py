"""difflid: DiffLI²D and DiffLoss as a BasicSR plugin. Importing it registers every arch, dataset, loss,
metric and model with basicsr's registries."""
from . import compat  # noqa: F401  makes basicsr importable on current torchvision; must run first

# isort: split
from . import archs, data, losses, metrics, models, priors  # noqa: F401  importing registers
from .version import __version__

__all__ = ['__version__']
