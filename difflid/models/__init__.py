"""Models: every `*_model.py` here is imported, and so registered, with this package."""
from difflid.utils.registry import import_by_suffix

models_modules = import_by_suffix(__name__, __file__, 'model')
