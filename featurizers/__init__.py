"""Featurizers: bases in which a hidden vector is split into features for interchange interventions."""
from .base import Featurizer, FeaturizerError
from .neurons import Neurons

__all__ = ["Featurizer", "FeaturizerError", "Neurons"]
