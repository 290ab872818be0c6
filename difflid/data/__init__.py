"""Datasets: every `*_dataset.py` here is imported, and so registered, with this package."""
from difflid.utils.registry import import_by_suffix

data_modules = import_by_suffix(__name__, __file__, 'dataset')
