"""nagindex: target-oriented pretraining data selection as a retrieval system."""

from nagindex.errors import NagError
from nagindex.schemas import FeatureSpec, NEURON_TYPES

__version__ = "0.1.0"

__all__ = ["NagError", "FeatureSpec", "NEURON_TYPES", "Index", "AppendResult", "Client", "__version__"]


def __getattr__(name: str):
    # The store pulls in lancedb and faiss (seconds of import time); load it only
    # when it is used, so that extraction-only work (a GPU worker, `nag extract`)
    # needs neither.
    if name in ("Index", "AppendResult"):
        from nagindex import api

        return getattr(api, name)
    if name == "Client":  # a client of `nag serve`: no store, no model
        from nagindex.service.client import Client

        return Client
    raise AttributeError(f"module 'nagindex' has no attribute {name!r}")
