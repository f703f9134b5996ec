"""Pictures of the numbers `analysis.py` computes, written as PNG files.

Drawing only: every function takes the dict of an `analysis` function, draws
it with matplotlib's Agg backend (no display needed) and writes the PNG
atomically. Every picture is `width_px` x `height_px` pixels exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from nagindex.atomic import atomic_path
from nagindex.errors import NagError, require_extra

DEFAULT_SIZE = (1200, 800)  # pixels
DPI = 100
MIN_SIZE = (200, 150)
# A side past 2**16 is more than PNG writers and Agg take, and the canvas is held in memory
# as RGBA (4 bytes a pixel): bound both, so that a typo is one line and not a MemoryError.
MAX_SIDE = 16_384
MAX_PIXELS = 64 * 2**20  # 256 MiB of canvas


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    """`size` as (width, height) pixels, or one line saying why it cannot be drawn."""
    w, h = (int(v) for v in size)
    if w < MIN_SIZE[0] or h < MIN_SIZE[1]:
        raise NagError(f"picture size {w}x{h} is too small; use at least {MIN_SIZE[0]}x{MIN_SIZE[1]} pixels")
    if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
        raise NagError(f"picture size {w}x{h} is too large; --width and --height go up to {MAX_SIDE} pixels, "
                       f"{MAX_PIXELS // 2**20} Mi pixels in all")
    return w, h


def _figure(size: tuple[int, int]):
    matplotlib = require_extra("matplotlib", "plots", "drawing pictures")

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    w, h = check_size(size)
    # A Figure not registered with pyplot: nothing global, nothing to close.
    return Figure(figsize=(w / DPI, h / DPI), dpi=DPI)


def _save(fig: Any, out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise NagError(f"pictures are written as PNG; give --out a .png name, not {out.name!r}")
    with atomic_path(out) as tmp:
        # No bbox_inches="tight": it would change the pixel size.
        fig.savefig(tmp, format="png", dpi=DPI)
    return out


def _colours(labels: list[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20" if len(labels) > 10 else "tab10"]
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}


def plot_scores(dist: dict, out: str | os.PathLike, *, title: str = "", size: tuple[int, int] = DEFAULT_SIZE) -> Path:
    """Histogram of nag_distance per `dataset` label, with the token-budget cut as a line."""
    fig = _figure(size)
    ax = fig.add_subplot(1, 1, 1)
    labels = list(dist["by_label"])
    colours = _colours(labels)
    everything = np.asarray(dist["distance"], dtype=float)
    lo, hi = (float(everything.min()), float(everything.max())) if len(everything) else (0.0, 1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 41)
    for lab in labels:
        values = dist["by_label"][lab]
        chosen = dist["selected_by_label"].get(lab, 0)
        ax.hist(values, bins=bins, histtype="stepfilled", alpha=0.45, color=colours[lab],
                label=f"{lab} (n={len(values)}, selected {chosen})")
    ax.axvline(dist["cut_distance"], color="black", linestyle="--", linewidth=1.5,
               label=(f"budget cut r_f={dist['fraction']:g}" if dist.get("fraction") is not None else
                      f"cut after the best {int(dist['selected'].sum())}") + f" (distance {dist['cut_distance']:.4f})")
    ax.set_xlabel("nag_distance (lower = closer to the target)")
    ax.set_ylabel("documents")
    ax.set_title(title or "NAG distance to the target, per dataset label")
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return _save(fig, out)


def plot_layers(means: dict, out: str | os.PathLike, *, title: str = "", size: tuple[int, int] = DEFAULT_SIZE) -> Path:
    """Per-layer mean similarity (weight sum in [0, 1]) of the target documents vs the pool."""
    fig = _figure(size)
    ax = fig.add_subplot(1, 1, 1)
    layers = np.asarray(means["layers"])
    width = 0.4
    ax.bar(layers - width / 2, means["target"], width=width, label="target documents", color="tab:red")
    ax.bar(layers + width / 2, means["pool"], width=width, label="pool documents", color="tab:blue")
    ax.set_xlabel("layer")
    ax.set_ylabel("mean per-layer similarity (sum of profile weights of the layer's top-K)")
    ax.set_title(title or "Where the similarity comes from: per-layer mean contribution")
    ax.set_xticks(layers)
    ax.tick_params(axis="x", labelsize="small")
    ax.legend()
    fig.tight_layout()
    return _save(fig, out)


def plot_map(fmap: dict, out: str | os.PathLike, *, title: str = "", size: tuple[int, int] = DEFAULT_SIZE) -> Path:
    """Scatter of the 2-D map, one colour per label (targets drawn last, as crosses)."""
    fig = _figure(size)
    ax = fig.add_subplot(1, 1, 1)
    coords = np.asarray(fmap["coords"])
    labels = np.asarray(fmap["labels"], dtype=object)
    names = sorted(set(labels.tolist()) - {"target"}) + (["target"] if "target" in set(labels.tolist()) else [])
    colours = _colours(names)
    for lab in names:
        m = labels == lab
        if lab == "target":
            ax.scatter(coords[m, 0], coords[m, 1], s=30, marker="x", color="black", label=f"target ({m.sum()})")
        else:
            ax.scatter(coords[m, 0], coords[m, 1], s=8, alpha=0.6, color=colours[lab], label=f"{lab} ({m.sum()})")
    method = {"pca": "PCA", "tsne": "t-SNE"}.get(fmap.get("method", ""), fmap.get("method", ""))
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_title(title or f"NAG features ({method} of the bag of (layer, neuron) pairs)")
    ax.legend(fontsize="small", markerscale=2, loc="best")
    fig.tight_layout()
    return _save(fig, out)
