"""Benchmark `nag query` on a synthetic pool (issue 4).

Synthetic NAG features: L=28 layers, K=20 distinct neurons per layer out of a
layer width of 3072, drawn with a Zipf-like popularity (exponent --zipf) whose
neuron order is shuffled per layer; fixed seed. The target is 500 documents
drawn the same way with a different seed.

Prints:
 (a) kernel docs/s: nagindex's gather-sum kernel vs the plain upstream-style
     numpy kernel (per-layer dict -> dense array gather on int64 features),
     on the same rows;
 (b) end-to-end `nag query --target-features` (a subprocess, --with-text,
     fraction 0.2) vs an upstream-style pandas pipeline (read features and
     payload parquet, join on docid, score, sort, select, write parquet);
 (c) `--top 1000` through the inverted lists vs the scan;
 (d) peak RSS of the `nag query` process at each size of --rss-sizes;
 (e) `nag query --each` with six targets vs one target, end to end (CLI), and
     each of the six selections checked against that target queried alone.

--k sets K (e.g. --k 100 --parts a for the kernel at K=100).

Usage:
    python benchmarks/bench_query.py --n 1000000 --rss-sizes 1000000,4000000
    python benchmarks/bench_query.py --smoke        # small, for CI
Every query runs with `--preset paper` (the SPEC), the formula the upstream
pipeline it is compared with computes.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nagindex.ranking import scoring
from nagindex.io import features_table
from nagindex.schemas import FeatureSpec, feature_column

L, K, WIDTH = 28, 20, 3072
NT = "fwd_up"


def spec() -> FeatureSpec:
    return FeatureSpec(backbone="synthetic-zipf", backbone_hash="5" * 64, num_layers=L, top_k=K,
                       neuron_types=(NT,), layer_widths={NT: WIDTH})


# -- synthetic data -------------------------------------------------------------
def zipf_probs(zipf: float) -> np.ndarray:
    p = 1.0 / np.arange(1, WIDTH + 1) ** zipf
    return p / p.sum()


def layer_block(rng, n: int, p: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """(n, K) distinct neurons per row, Zipf popularity: draw with replacement,
    then redraw the duplicates until none is left."""
    cdf = np.cumsum(p)
    draw = lambda size: np.minimum(np.searchsorted(cdf, rng.random(size)), WIDTH - 1)  # noqa: E731
    block = draw((n, K))
    while True:
        block.sort(axis=1)
        dup = np.zeros_like(block, dtype=bool)
        dup[:, 1:] = block[:, 1:] == block[:, :-1]
        count = int(dup.sum())
        if not count:
            break
        block[dup] = draw(count)
    # shuffle the ranks within a row (a NAG is ordered by impact, not by index)
    block = np.take_along_axis(block, np.argsort(rng.random((n, K)), axis=1), axis=1)
    return perm[block].astype(np.uint16)


def feature_chunks(n: int, seed: int, zipf: float, chunk: int = 100_000):
    """Deterministic (rows, L*K) uint16 chunks; the per-layer neuron order is fixed by seed 0."""
    perm_rng = np.random.default_rng(12345)
    perms = [perm_rng.permutation(WIDTH) for _ in range(L)]
    p = zipf_probs(zipf)
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        out = np.empty((rows, L * K), dtype=np.uint16)
        for l in range(L):
            out[:, l * K : (l + 1) * K] = layer_block(rng, rows, p, perms[l])
        yield start, out


def write_pool(dirpath: Path, n: int, seed: int, zipf: float) -> tuple[Path, Path]:
    """payload.parquet (docid, doc, token_num, dataset) + features.parquet (nag extract layout)."""
    payload_path, features_path = dirpath / "payload.parquet", dirpath / "features.parquet"
    s = spec()
    labels = np.array(["web", "code", "wiki", "news", "books"])
    rng = np.random.default_rng(seed + 1)
    pw = fw = None
    for start, feats in feature_chunks(n, seed, zipf):
        rows = len(feats)
        docids = [f"doc-{(start + i) * 7919 % (n * 13):012d}-{start + i}" for i in range(rows)]
        payload = pa.table({
            "docid": pa.array(docids, pa.string()),
            "doc": pa.array([f"synthetic document {start + i} " * 4 for i in range(rows)], pa.string()),
            "token_num": pa.array(rng.integers(20, 120, rows), pa.int64()),
            "dataset": pa.array(labels[rng.integers(0, len(labels), rows)].tolist(), pa.string()),
        })
        ft = features_table(docids, {NT: feats}, s)
        if pw is None:
            pw = pq.ParquetWriter(payload_path, payload.schema)
            fw = pq.ParquetWriter(features_path, ft.schema)
        pw.write_table(payload)
        fw.write_table(ft)
    pw.close()
    fw.close()
    return payload_path, features_path


def write_target(path: Path, n: int, seed: int, zipf: float) -> np.ndarray:
    feats = np.concatenate([f for _, f in feature_chunks(n, seed, zipf)])
    pq.write_table(features_table([f"target-{i}" for i in range(n)], {NT: feats}, spec()), path)
    return feats


# -- the upstream-style baselines ----------------------------------------------
def upstream_weights(target: np.ndarray) -> list[dict[int, float]]:
    out = []
    for l in range(L):
        counts = Counter(target[:, l * K : (l + 1) * K].ravel().tolist())
        total = sum(counts.values())
        out.append({j: c / total for j, c in counts.items()})
    return out


def upstream_kernel(features64: np.ndarray, weights: list[dict[int, float]]) -> np.ndarray:
    sim = np.zeros(len(features64))
    for l, w in enumerate(weights):
        table = np.zeros(WIDTH)
        for j, v in w.items():
            table[j] = v
        sim += table[features64[:, l * K : (l + 1) * K]].sum(axis=1)
    return 1.0 - sim / L


def upstream_pipeline(features_path: Path, payload_path: Path, target_path: Path, out: Path, fraction: float) -> int:
    import pandas as pd

    col = feature_column(NT)
    target = pd.read_parquet(target_path)
    weights = upstream_weights(np.stack(target[col].values).astype(np.int64))
    feats = pd.read_parquet(features_path)
    payload = pd.read_parquet(payload_path)
    df = payload.merge(feats, on="docid", how="inner")
    f64 = np.stack(df[col].values).astype(np.int64)
    df["nag_distance"] = upstream_kernel(f64, weights)
    df = df.drop(columns=[col]).sort_values(["nag_distance", "docid"], kind="stable")
    budget = math.floor(df["token_num"].sum() * fraction)
    keep = (df["token_num"].cumsum() <= budget).to_numpy()
    sel = df[keep] if keep.any() else df.iloc[:1]
    sel.to_parquet(out, index=False)
    return len(sel)


# -- helpers ----------------------------------------------------------------------
def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


def nag_cmd(*args) -> list[str]:
    return [sys.executable, "-c", "from nagindex.cli import main; main()", *map(str, args)]


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of `cmd`, measured in a fresh watcher process."""
    watcher = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
        "w = time.perf_counter() - t; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, w, r.returncode)"
    )
    out = subprocess.run([sys.executable, "-c", watcher, *cmd], capture_output=True, text=True, check=True)
    rss, wall, rc = out.stdout.split()
    if rc != "0":
        raise RuntimeError(f"{cmd} failed with exit code {rc}")
    return float(rss), float(wall)


def build_index(work: Path, n: int, seed: int, zipf: float, tag: str) -> tuple[Path, Path, Path, float]:
    from nagindex import Index

    d = work / f"pool-{tag}"
    idx = d / "index"
    if (idx / "manifest.json").exists() or (d / "done").exists():
        print(f"  reusing {idx}")
        return idx, d / "payload.parquet", d / "features.parquet", 0.0
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    t_gen, (payload, features) = timed(write_pool, d, n, seed, zipf)
    print(f"  generated {n} docs in {t_gen:.1f} s")
    t_build, _ = timed(Index.build, idx, [payload], features=[features], progress=False,
                        postings=True, embedder=None)  # (c) compares the lists with the scan
    print(f"  built the index in {t_build:.1f} s ({n / t_build:,.0f} docs/s)")
    (d / "done").touch()
    return idx, payload, features, t_build


def main(argv=None) -> int:
    global K
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run-upstream"]:  # the reference pipeline as a process of its own (see (b))
        features, payload, target, out, fraction = argv[1:6]
        upstream_pipeline(Path(features), Path(payload), Path(target), Path(out), float(fraction))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="pool documents (default 1,000,000)")
    ap.add_argument("--targets", type=int, default=500, help="target documents (default 500)")
    ap.add_argument("--kernel-rows", type=int, default=250_000, help="rows timed in (a) (default 250,000)")
    ap.add_argument("--rss-sizes", default="", help="comma-separated pool sizes for (d), e.g. 1000000,4000000 "
                    "(default: just --n)")
    ap.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of neuron popularity (default 1.0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="where pools and indexes go (default: a temp dir, removed)")
    ap.add_argument("--skip-upstream", action="store_true", help="skip the pandas pipeline of (b)")
    ap.add_argument("--parts", default="abcde", help="which figures to measure, e.g. 'd' (default abcde)")
    ap.add_argument("--k", type=int, default=K, help=f"neurons per layer, K (default {K})")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes for CI")
    args = ap.parse_args(argv)
    K = args.k
    if args.smoke:
        args.n, args.targets, args.kernel_rows = 20_000, 50, 20_000
        args.rss_sizes = args.rss_sizes or "20000"
    rss_sizes = [int(x) for x in args.rss_sizes.split(",") if x] or [args.n]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_query-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"synthetic pool: n={args.n:,}, L={L}, K={K}, width={WIDTH}, zipf={args.zipf}, targets={args.targets}, "
          f"seed={args.seed}, kernel={'numba' if scoring.HAVE_NUMBA else 'numpy'}, cores={os.cpu_count()}")
    try:
        target_path = work / "target.parquet"
        target = write_target(target_path, args.targets, args.seed + 1000, args.zipf)
        profile = scoring.build_profile(target, num_layers=L, top_k=K, width=WIDTH)
        weights = upstream_weights(target.astype(np.int64))

        # (a) kernel ---------------------------------------------------------
        if "a" in args.parts:
            kernel_figures(args, target, profile, weights)
        if not set("bcde") & set(args.parts):
            return 0
        if not set("bce") & set(args.parts):
            rss_figures(args, work, rss_sizes, None, target_path)
            return 0
        # build the main index ------------------------------------------------
        print(f"building a {args.n:,}-doc index")
        idx, payload, features, _ = build_index(work, args.n, args.seed, args.zipf, str(args.n))
        if "b" in args.parts:
            end_to_end_figures(args, work, idx, payload, features, target_path)
        if "c" in args.parts:
            inverted_figures(args, idx, target_path)
        if "e" in args.parts:
            each_figures(args, work, idx)
        if "d" in args.parts:
            rss_figures(args, work, rss_sizes, idx, target_path)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def kernel_figures(args, target, profile, weights) -> None:
    rows = min(args.kernel_rows, args.n)
    feats = np.concatenate([f for _, f in feature_chunks(rows, args.seed, args.zipf)])
    kernel = scoring._kernel_name()  # the large-pool kernel (numba where installed), whatever the rows
    scoring.score_features(feats[:100], profile, kernel=kernel)  # compile / load the cached kernel
    t_ours, ours = min((timed(scoring.score_features, feats, profile, kernel=kernel) for _ in range(3)),
                       key=lambda x: x[0])
    t_np, _ = timed(scoring.score_features, feats, profile, kernel="numpy")
    f64 = feats.astype(np.int64)  # upstream keeps int64 features; not timed
    t_up, up = timed(upstream_kernel, f64, weights)
    del f64
    diff = float(np.max(np.abs(scoring.nag_distance(ours, profile) - up)))
    print(f"(a) kernel on {rows:,} rows: nagindex {rows / t_ours:,.0f} docs/s, numpy fallback "
          f"{rows / t_np:,.0f} docs/s, upstream-style {rows / t_up:,.0f} docs/s; "
          f"ratio {t_up / t_ours:.1f}x (fallback {t_up / t_np:.1f}x); max |distance diff| {diff:.2e}")
    discounted_kernel_figures(feats, target, kernel)
    del feats


def discounted_kernel_figures(feats: np.ndarray, target: np.ndarray, kernel: str) -> None:
    """The default scoring's kernel (idf weights, power 0.5, the 1/log2(r+2) rank
    discount) vs a plain numpy kernel of the same formula: per layer, a dense
    weight table gathered on int64 features, times the per-rank discount, summed."""
    rows = len(feats)
    counts = scoring.layer_counts(feats, num_layers=L, top_k=K, width=WIDTH).reshape(L, WIDTH)  # the pool's df
    profile = scoring.build_profile(target, num_layers=L, top_k=K, width=WIDTH, power=0.5, weighting="idf",
                                    pool_counts=counts, pool_size=rows, discount="log2")
    scoring.score_features(feats[:100], profile, kernel=kernel)  # compile / load the cached kernel
    t_ours, ours = min((timed(scoring.score_features, feats, profile, kernel=kernel) for _ in range(3)),
                       key=lambda x: x[0])
    tables = profile.weights.astype(np.float64)  # (L, width): the same weights, as floats
    disc = profile.slot_multipliers()[:K].astype(np.float64)
    f64 = feats.astype(np.int64)  # not timed, as for the SPEC kernel

    def plain_kernel():
        total = np.zeros(rows)
        for l in range(L):
            total += (tables[l][f64[:, l * K : (l + 1) * K]] * disc).sum(axis=1)
        return total

    t_plain, plain = timed(plain_kernel)
    diff = float(np.max(np.abs(ours.astype(np.float64) - plain)) / profile.denominator)
    print(f"(a) default scoring (idf, power 0.5, rank discount), K={K}: nagindex {rows / t_ours:,.0f} docs/s, "
          f"plain numpy {rows / t_plain:,.0f} docs/s; ratio {t_plain / t_ours:.1f}x; "
          f"max |similarity diff| {diff:.2e}")


def end_to_end_figures(args, work, idx, payload, features, target_path) -> None:
    out_ours = work / "ours.parquet"
    cmd = nag_cmd("query", idx, "--preset", "paper", "--target-features", target_path, "--out", out_ours, "--fraction", "0.2",
                  "--with-text", "--no-progress")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)  # warm: numba cache, page cache
    rss, t_cli = peak_rss_mb(cmd)
    t_cli = min(t_cli, peak_rss_mb(cmd)[1])
    print(f"(b) nag query --target-features (fraction 0.2, --with-text): {t_cli:.2f} s wall, peak RSS {rss:.0f} MiB")
    from nagindex.io import write_table_atomic
    from nagindex.ranking.query import run_query
    from nagindex import Index

    def api_query():
        index = Index.open(idx)
        res = run_query(index, preset="paper", target_features=[str(target_path)], fraction=0.2, with_text=True)
        write_table_atomic(res.table, work / "ours-api.parquet")

    api_query()  # warm: imports (lancedb alone takes seconds), caches
    t_api = min(timed(api_query)[0] for _ in range(2))
    print(f"    the same from Python (Index.open + Index.query + write, modules imported): {t_api:.2f} s")
    if not args.skip_upstream:
        out_up = work / "upstream.parquet"
        t_upp, n_up = timed(upstream_pipeline, features, payload, target_path, out_up, 0.2)
        # the same pipeline as its own script, start-up (python, pandas) included like the CLI's
        script = [sys.executable, __file__, "--run-upstream", str(features), str(payload), str(target_path),
                  str(out_up), "0.2"]
        t_upp_proc = min(peak_rss_mb(script)[1] for _ in range(2))
        print(f"    upstream-style pandas pipeline as a script of its own: {t_upp_proc:.2f} s; "
              f"CLI vs script {t_upp_proc / t_cli:.1f}x (side by side, start-up included on both sides)")
        a = pq.read_table(out_ours, columns=["docid"]).column(0).to_pylist()
        b = pq.read_table(out_up, columns=["docid"]).column(0).to_pylist()
        print(f"    upstream-style pandas pipeline: {t_upp:.2f} s; ratio {t_upp / t_cli:.1f}x (CLI; goal 10x at 200k, "
              f"30x at 1M), "
              f"{t_upp / t_api:.1f}x (Python API); "
              f"selections: {len(a)} vs {n_up} rows, {len(set(a) & set(b))} docids in common "
              f"(upstream float sums order exact ties by summation order, not docid)")


def inverted_figures(args, idx, target_path) -> None:
    from nagindex.ranking.query import run_query
    from nagindex import Index

    index = Index.open(idx)
    top = min(1000, max(args.n // 100, 1))
    run_query(index, preset="paper", target_features=[str(target_path)], top=top, plan="scan")  # warm
    t_scan, r_scan = min((timed(run_query, index, preset="paper", target_features=[str(target_path)], top=top, plan="scan")
                          for _ in range(2)), key=lambda x: x[0])
    t_inv, r_inv = min((timed(run_query, index, preset="paper", target_features=[str(target_path)], top=top, plan="inverted")
                        for _ in range(2)), key=lambda x: x[0])
    t_auto, r_auto = timed(run_query, index, preset="paper", target_features=[str(target_path)], top=top)
    same = r_scan.table.column("docid").to_pylist() == r_inv.table.column("docid").to_pylist()
    print(f"(c) --top {top}: scan {t_scan:.2f} s, inverted lists {t_inv:.2f} s, ratio scan/inverted "
          f"{t_scan / t_inv:.2f}x; identical: {same}; auto plan {t_auto:.2f} s")
    print(f"    inverted: {r_inv.explain()}")
    print(f"    auto:     {r_auto.explain()}")


def each_figures(args, work, idx) -> None:
    """Six targets in one `--each` query vs one target, both through the CLI."""
    paths = []
    for i in range(6):
        path = work / f"each-{i}.parquet"
        write_target(path, args.targets, args.seed + 2000 + i, args.zipf)
        paths.append(path)
    common = ["--fraction", "0.2", "--no-progress", "--preset", "paper"]
    one = nag_cmd("query", idx, "--target-features", paths[0], "--out", work / "each-one.parquet", *common)
    six = nag_cmd("query", idx, *[a for p in paths for a in ("--target-features", p)], "--each",
                  "--out", work / "each-six.parquet", *common)
    subprocess.run(six, check=True, stdout=subprocess.DEVNULL)  # warm
    t_one = min(peak_rss_mb(one)[1] for _ in range(2))
    t_six = min(peak_rss_mb(six)[1] for _ in range(2))
    from nagindex import Index
    from nagindex.ranking.query import run_query

    index = Index.open(idx)
    table = pq.read_table(work / "each-six.parquet", columns=["docid", "target"])
    names = table.column("target").to_pylist()
    same = all(
        [d for d, t in zip(table.column("docid").to_pylist(), names) if t == p.stem]
        == run_query(index, preset="paper", target_features=[str(p)], fraction=0.2).table.column("docid").to_pylist()
        for p in paths
    )
    print(f"(e) nag query --each, 6 targets: {t_six:.2f} s vs 1 target {t_one:.2f} s: {t_six / t_one:.2f}x "
          f"(goal <= 2x); {table.num_rows} rows; each equals its target alone: {same}")


def rss_figures(args, work, rss_sizes, idx, target_path) -> None:
    """Peak RSS of `nag query` at each pool size, with the SPEC scores (--preset paper)
    and with the default scoring, and how much the largest pool adds to the smallest."""
    peaks: dict[str, list[float]] = {"paper": [], "default": []}
    for n in rss_sizes:
        if n == args.n and idx is not None:
            rss_idx = idx
        else:
            print(f"building a {n:,}-doc index for (d)")
            rss_idx, *_ = build_index(work, n, args.seed, args.zipf, str(n))
        out = work / f"rss-{n}.parquet"
        for how, preset in (("paper", ["--preset", "paper"]), ("default", [])):
            cmd = nag_cmd("query", rss_idx, *preset, "--target-features", target_path, "--out", out, "--fraction", "0.2",
                          "--no-progress")
            rss, wall = peak_rss_mb(cmd)
            peaks[how].append(rss)
            print(f"(d) n={n:,}, {how} scoring: nag query peak RSS {rss:.0f} MiB ({rss * 2**20 / n:.0f} B/doc), "
                  f"{wall:.2f} s wall")
        if rss_idx != idx and args.workdir is None:  # a --workdir keeps its pools for the next run
            shutil.rmtree(rss_idx.parent, ignore_errors=True)
    if len(rss_sizes) > 1:
        growth = ", ".join(f"{k} {v[-1] / v[0] - 1:+.1%}" for k, v in peaks.items())
        print(f"(d) peak RSS at {rss_sizes[-1]:,} vs {rss_sizes[0]:,} docs: {growth} (goal: within 10%)")


if __name__ == "__main__":
    raise SystemExit(main())
