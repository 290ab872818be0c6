"""Losses: every `*_loss.py` here is imported, and so registered, with this package."""
from difflid.utils.registry import import_by_suffix

losses_modules = import_by_suffix(__name__, __file__, 'loss')
