"""Built-in tasks."""
from .equality import equality_mlp, hierarchical_equality

__all__ = ["hierarchical_equality", "equality_mlp"]
