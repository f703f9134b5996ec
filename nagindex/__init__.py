"""nagindex: target-oriented pretraining data selection as a retrieval system."""

from .errors import NagError
from .schemas import FeatureSpec, NEURON_TYPES

__version__ = "0.1.0"

__all__ = ["NagError", "FeatureSpec", "NEURON_TYPES", "__version__"]
