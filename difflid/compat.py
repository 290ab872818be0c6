"""Lets PyPI basicsr 1.4.2 (Aug 2022) import on today's torchvision. Imported by ``difflid`` before
anything imports basicsr, and the only change difflid makes to other packages at import time:

``torchvision.transforms.functional_tensor`` (removed in torchvision 0.17, imported by
``basicsr.data.degradations``) is aliased to ``torchvision.transforms._functional_tensor``.

basicsr's own functions stay basicsr's, so a process that imports difflid only for an arch keeps basicsr's
behaviour. What difflid's tools change while basicsr's pipelines run (CPU-safe, working-directory-independent
resume; gloo on the CPU; ``total_batch_size``; the epoch count) is in ``difflid.entry``, and
DDP of CPU networks is ``RestorationModel.model_to_device``. The optimizer builder of 1.4.2 accepts only Adam;
difflid's models add the others themselves.
"""
import sys

__all__: list[str] = []


def _alias_functional_tensor() -> None:
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401  torchvision < 0.17 still has it
    except ImportError:
        import torchvision.transforms._functional_tensor as functional_tensor
        sys.modules['torchvision.transforms.functional_tensor'] = functional_tensor


_alias_functional_tensor()
