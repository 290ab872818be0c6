"""The frozen diffusion priors and feature sources, one family.

Every ``*_arch.py`` here is imported, and so registered in basicsr's ``ARCH_REGISTRY``, with this package: the ADM
UNet (``ADMUNet``, presets as data), the feature sources (``HSpaceExtractor``, ``ReleasedFeatureExtractor``,
``DiffusersUNetExtractor``, ``TimmFeatureExtractor``) and ``DiffusersUNet2D`` (a trainable diffusers UNet). Beside
them: the shared base (``base``), noise schedules (``schedules``), position-indexed noise (``noise``), the feature
cache (``cache``), sampling from a prior (``sampling``) and the one builder (``builder``).
"""
from difflid.utils.registry import import_by_suffix

priors_modules = import_by_suffix(__name__, __file__, 'arch')
