"""The one builder of the prior family: every consumer (DiffLI2DModel, DiffLoss, the probe, the sampler, inference,
export, the benchmark) turns a ``network_prior``-style option block into a member here, so an option such as
``noise_schedule``, ``beta_start`` or ``class_label`` reaches all of them the same way.

``build_prior(block)`` builds a registered feature source (``GuidanceExtractor`` member); ``control_options(block)``
is the block of its random-weight control (same member, same architecture); ``with_denoiser(block)`` asks for the
member's full ε-prediction network too (DiffLoss's ε term, DDIM sampling), which only members that have one accept.
"""
import copy

from basicsr.utils.registry import ARCH_REGISTRY

from difflid.priors.base import GuidanceExtractor

__all__ = ['build_prior', 'control_options', 'prior_class', 'same_network', 'with_denoiser']


def prior_class(block: dict, key: str = 'network_prior') -> type[GuidanceExtractor]:
    """The registered feature-source class that ``block['type']`` names; one KeyError naming ``key`` otherwise (as
    for any unregistered ``type``)."""
    if not isinstance(block, dict) or 'type' not in block:
        raise KeyError(f'{key} must be a block with a `type` (a feature source such as HSpaceExtractor), got '
                         f'{block!r}')
    name = block['type']
    try:
        cls = ARCH_REGISTRY.get(name)
    except KeyError:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, GuidanceExtractor)):
        members = sorted(n for n, c in ARCH_REGISTRY._obj_map.items()
                         if isinstance(c, type) and issubclass(c, GuidanceExtractor))
        raise KeyError(f'{key}.type {name!r} is not a feature source; choose one of {", ".join(members)}')
    return cls


def build_prior(block: dict, key: str = 'network_prior') -> GuidanceExtractor:
    """A frozen feature source from its option block (never mutated): ``type`` plus the member's arguments."""
    cls = prior_class(block, key)
    return cls(**{k: copy.deepcopy(v) for k, v in block.items() if k != 'type'})


def with_denoiser(block: dict, key: str = 'network_prior') -> dict:
    """``block`` asking its member to keep the full ε-prediction network (the decoder of an encoder-only tap).
    Raises ValueError naming ``key`` for a member that has none (timm backbones)."""
    cls = prior_class(block, key)
    if not cls.has_denoiser_option:
        raise ValueError(f'{key}.type {block["type"]} has no diffusion network (no ε prediction): DiffLoss\'s ε term '
                         'and sampling need a diffusion prior (HSpaceExtractor, ReleasedFeatureExtractor, '
                         'DiffusersUNetExtractor)')
    return {**block, **cls.denoiser_options()}


def control_options(block: dict, draw: int = 0) -> dict:
    """The option block of ``block``'s control number ``draw``: the same member and architecture with random weights.

    ``checkpoint`` (every member's weights key) is dropped, ``random_weights`` set, and the random init seeded with
    ``init_seed`` + 1 + ``draw``, so that a random-weight prior still gets a different random control and several
    draws give several independent controls (the spread of a control is a distribution, not one number).
    """
    control = {k: v for k, v in block.items() if k != 'checkpoint'}
    control.update(random_weights=True, init_seed=int(block.get('init_seed', 0)) + 1 + int(draw))
    return control


def same_network(a: dict, b: dict) -> bool:
    """Whether two option blocks build the same network with the same noise schedule (``network_identity``): then
    one copy serves both (DiffLI2DModel's prior and its DiffLoss)."""
    return a.get('type') == b.get('type') and prior_class(a).network_identity(a) == prior_class(b).network_identity(b)
