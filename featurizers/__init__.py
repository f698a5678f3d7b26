"""Featurizers: bases in which a hidden vector is split into features for interchange interventions."""
from .base import Featurizer, FeaturizerError, Tags
from .das import DAS, BoundlessDAS
from .dbm import DBM
from .neurons import Neurons
from .pca import PCA
from .sae import SAE
from .subspace import Subspace
from .supervised import SupervisedDictionary

__all__ = ["Featurizer", "FeaturizerError", "Tags", "Neurons", "DAS", "BoundlessDAS", "DBM", "PCA", "SAE",
           "SupervisedDictionary", "Subspace"]
