"""The ground floor: helpers every layer may use; nothing here imports the rest of difflid."""
from .padding import pad_to_multiple

__all__ = ['pad_to_multiple']
