"""Quiet the progress bars of the libraries nagindex drives (`--no-progress`).

nagindex's own bars take ``progress=False``; the model loader's (transformers,
the hub client) and Ray Data's have their own switches, set here once.
"""

from __future__ import annotations

import os
import sys


def silence_library_bars() -> None:
    """Turn off the hub's, transformers' and Ray Data's progress bars for this process
    (and for Ray workers started after it)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging

        logging.disable_progress_bar()
    if "ray.data" in sys.modules:
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
