"""Network architectures: every `*_arch.py` here is imported, and so registered, with this package."""
from difflid.utils.registry import import_by_suffix

archs_modules = import_by_suffix(__name__, __file__, 'arch')
