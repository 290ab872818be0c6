"""The base of the degradation family and its registry (see the package docstring)."""
import difflib
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from basicsr.utils.registry import Registry

__all__ = ['DEGRADATION_REGISTRY', 'Degradation', 'build_degradation', 'check_range']

DEGRADATION_REGISTRY = Registry('degradation')


def check_range(owner: str, key: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    """``value`` as a (min, max) pair inside [low, high]; ValueError naming ``owner.key`` otherwise."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f'{owner}.{key} must be a [min, max] pair, got {value!r}') from None
    if not low <= lo <= hi <= high:
        raise ValueError(f'{owner}.{key} must be [min, max] with {low} <= min <= max <= {high}, got {list(value)}')
    return lo, hi


class Degradation:
    """A synthetic degradation: ``task`` names it in reports; images are (H, W, 3) float32 in [0, 1]."""

    task: str = ''

    def sample_parameters(self, rng: np.random.Generator, height: int, width: int) -> dict[str, Any]:
        """The random parameters of one degraded image (drawn from the member's ranges)."""
        raise NotImplementedError

    def apply(self, clean: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """The degraded image for given parameters: a formula, no randomness beyond ``params``."""
        raise NotImplementedError

    def __call__(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if clean.ndim != 3 or clean.shape[2] != 3:
            raise ValueError(f'{type(self).__name__} needs an (H, W, 3) image, got shape {clean.shape}')
        clean = clean.astype(np.float32, copy=False)
        return self.apply(clean, self.sample_parameters(rng, *clean.shape[:2]))

    def seeded(self, clean: np.ndarray, seed: int, key: str) -> np.ndarray:
        """The degraded image drawn from (``seed``, ``key``) alone: the same whatever was drawn before or elsewhere."""
        words = np.frombuffer(hashlib.sha256(f'{type(self).__name__}/{key}'.encode()).digest()[:8], dtype=np.uint32)
        return self(clean, np.random.default_rng([int(seed), *(int(w) for w in words)]))


def build_degradation(opt: dict) -> Degradation:
    """A member from its option block ``{type: ..., ...}``; errors name the type or key."""
    if not isinstance(opt, dict) or 'type' not in opt:
        raise KeyError(f'a degradation block needs a `type`, got {opt!r}')
    name = opt['type']
    if name not in DEGRADATION_REGISTRY:
        close = difflib.get_close_matches(name, list(DEGRADATION_REGISTRY.keys()), n=1)
        hint = f' (did you mean {close[0]}?)' if close else ''
        raise KeyError(f'degradation type {name!r} is not registered{hint}; choose one of '
                       f'{", ".join(sorted(DEGRADATION_REGISTRY.keys()))}')
    return DEGRADATION_REGISTRY.get(name)(**{k: v for k, v in opt.items() if k != 'type'})
