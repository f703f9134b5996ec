"""Inverted lists vs the scan on a pool with the structure of real text (issue 13).

The pool is made from the real NAGs of `shared/eval/nag-features/pool.npz`
(4,800 documents of 12 domains, SmolLM2-135M, L=30, width 1536, top-100 per
layer): each synthetic document copies one real document and perturbs it,
each of its K neurons per layer kept with probability --keep and otherwise
replaced by one of that document's next most impactful neurons (ranks K..2K),
so neurons co-occur as they do in text, and always-on neurons stay always on.
The target is a real target set (default arc_challenge, 200 items).

Prints, for `--top N` with the pool contrast (always-on neurons weigh ~0):
the scan, the inverted lists (forced) and the planner's own choice, side by
side, whether the three answers are identical, and the planner's reasons;
then the share of the index's disk the inverted lists take.

Usage:
    python benchmarks/bench_inverted.py --n 1000000 --top 1000
    python benchmarks/bench_inverted.py --smoke      # small, for CI
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from nagindex.schemas import FeatureSpec

EVAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "eval" / "nag-features"
NT = "fwd_up"


def load_real(path: Path, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(top100 (n, L, 100) uint16, domain labels) of a features file."""
    data = np.load(path)
    return data["top100"], data["domain"]


def perturbed_features(real: np.ndarray, n: int, k: int, keep: float, seed: int, chunk: int = 65536):
    """(start, (rows, L*k) uint16) chunks: resampled real documents, perturbed (see the module doc)."""
    rng = np.random.default_rng(seed)
    m, L, depth = real.shape
    spare = min(2 * k, depth) - k
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        base = rng.integers(0, m, rows)
        top = real[base, :, :k].copy()  # (rows, L, k)
        if spare > 0:
            swap = rng.random((rows, L, k)) >= keep
            # replacements: distinct ranks k..2k-1 of the same document, so the row stays distinct
            pick = np.argsort(rng.random((rows, L, spare)), axis=2) + k
            repl = np.take_along_axis(real[base], pick, axis=2)
            if spare < k:  # too few spare ranks: the last positions keep their neuron
                repl = np.concatenate([repl, top[:, :, spare:]], axis=2)
            top = np.where(swap, repl, top)
        yield start, base, top.reshape(rows, L * k).astype(np.uint16)


def build(path: Path, real, domains, n: int, k: int, keep: float, seed: int, width: int):
    from nagindex import Index

    spec = FeatureSpec(backbone="real-nag-resampled", backbone_hash="7" * 64, num_layers=real.shape[1], top_k=k,
                       neuron_types=(NT,), layer_widths={NT: width})
    index = Index.create(path, spec, postings=True)  # the lists are what this measures
    rng = np.random.default_rng(seed + 1)

    def batches():
        for start, base, feats in perturbed_features(real, n, k, keep, seed):
            rows = len(feats)
            docs = pa.table({
                "docid": pa.array([f"d{start + i:09d}" for i in range(rows)], pa.string()),
                "doc": pa.array([""] * rows, pa.string()),
                "token_num": pa.array(rng.integers(20, 120, rows), pa.int64()),
                "dataset": pa.array(domains[base].tolist(), pa.string()),
            })
            yield docs, {NT: feats}

    index.append_batches(batches(), progress=False, total=n)
    return Index.open(path)


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return time.perf_counter() - t, out


def dir_bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--top", type=int, default=1000)
    ap.add_argument("--keep", type=float, default=0.8, help="chance a neuron of the real document is kept (0.8)")
    ap.add_argument("--target", default="arc_challenge", help="target set of shared/eval/nag-features")
    ap.add_argument("--contrast", default="pool", help="profile weighting (default pool)")
    ap.add_argument("--eval-dir", type=Path, default=EVAL)
    ap.add_argument("--workdir", type=Path, default=None, help="keeps the index there for reuse")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.top = 60_000, 100
    real, domains = load_real(args.eval_dir / "pool.npz", args.k)
    target, _ = load_real(args.eval_dir / f"{args.target}.npz", args.k)
    width = 1536  # SmolLM2-135M intermediate size
    assert int(real.max()) < width
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_inverted-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"real-{args.n}-k{args.k}-keep{args.keep}"
    try:
        from nagindex import Index
        from nagindex.ranking.query import run_query

        if (path / "manifest.json").exists():
            index = Index.open(path)
        else:
            shutil.rmtree(path, ignore_errors=True)
            t_build, index = timed(build, path, real, domains, args.n, args.k, args.keep, args.seed, width)
            print(f"built {args.n:,} resampled real NAGs in {t_build:.1f} s")
        tfeat = target[:, :, : args.k].reshape(len(target), -1).astype(np.uint16)
        # the SPEC's additive scores (the paper preset), weighted as --contrast says: the lists record
        # which documents hold a neuron, not at which rank, so the default's rank discount always scans
        kw = dict(top=args.top, preset="paper", contrast=None if args.contrast == "none" else args.contrast)
        run_query(index, [tfeat], plan="scan", **kw)  # warm: kernel, page cache
        t_scan, scan = min((timed(run_query, index, [tfeat], plan="scan", **kw) for _ in range(2)), key=lambda x: x[0])
        t_inv, inv = min((timed(run_query, index, [tfeat], plan="inverted", **kw) for _ in range(2)), key=lambda x: x[0])
        t_auto, auto = timed(run_query, index, [tfeat], **kw)
        ids = lambda r: r.table.column("docid").to_pylist()  # noqa: E731
        dist = lambda r: r.table.column("nag_distance").to_pylist()  # noqa: E731
        same = ids(scan) == ids(inv) == ids(auto) and dist(scan) == dist(inv) == dist(auto)
        print(f"pool: {args.n:,} docs from {len(real):,} real NAGs (L={real.shape[1]}, K={args.k}, keep {args.keep}), "
              f"target {args.target} ({len(target)} docs), --top {args.top}, contrast {args.contrast}, "
              f"cores={os.cpu_count()}")
        print(f"--top {args.top}: scan {t_scan:.3f} s, inverted lists {t_inv:.3f} s, auto {t_auto:.3f} s; "
              f"scan/inverted {t_scan / t_inv:.1f}x, scan/auto {t_scan / t_auto:.1f}x; identical: {same}")
        print(f"    inverted: {inv.explain()}")
        print(f"    auto:     {auto.explain()}")
        total, lists = dir_bytes(path), dir_bytes(path, "postings.*")
        print(f"disk: {total / args.n:,.0f} B/doc, of it inverted lists {lists / args.n:,.0f} B/doc "
              f"({lists / max(total, 1):.0%})")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
