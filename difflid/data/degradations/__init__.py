"""Synthetic degradations: one registered family, chosen by ``{type: ..., <parameter ranges>}`` in options.

Each member turns a clean image into a degraded one with parameters drawn from stated ranges
(``Degradation.sample_parameters``) and applied by a formula (``Degradation.apply``), so that a test can check the
formula with given parameters and the draws separately. ``Degradation.seeded`` draws from (seed, key), e.g. an image
name, so that test sets degraded on the fly are the same for every run, batch position and loader worker. A new
synthetic degradation is a small class registered here (``DEGRADATION_REGISTRY``).

Members: ``HazeDegradation`` (atmospheric scattering, random smooth depth), ``RainStreaks``, ``GaussianNoise``
(8-bit σ, clipped and quantised to 8 bits as the all-in-one protocols' test inputs), ``LowLight`` (gamma, gain,
sensor noise).
"""
from difflid.data.degradations.base import DEGRADATION_REGISTRY, Degradation, build_degradation
from difflid.data.degradations.haze import HazeDegradation
from difflid.data.degradations.low_light import LowLight
from difflid.data.degradations.noise import GaussianNoise
from difflid.data.degradations.rain import RainStreaks

__all__ = ['DEGRADATION_REGISTRY', 'Degradation', 'GaussianNoise', 'HazeDegradation', 'LowLight', 'RainStreaks',
           'build_degradation']
