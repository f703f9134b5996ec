"""nagindex: target-oriented pretraining data selection as a retrieval system."""

from .errors import NagError
from .schemas import FeatureSpec, NEURON_TYPES
from .store import AppendResult, Index

__version__ = "0.1.0"

__all__ = ["NagError", "FeatureSpec", "NEURON_TYPES", "Index", "AppendResult", "__version__"]
