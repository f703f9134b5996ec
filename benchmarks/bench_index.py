"""Index build / append benchmark on synthetic NAG features.

Figures printed:
  * build throughput (docs/s) of `Index.build` from precomputed features
    (nagindex parquet, joined to a pool parquet on docid);
  * append of +10% documents vs a full rebuild of the grown pool
    (goal: append <= 15% of the rebuild time);
  * size on disk per document (Lance table, forward index, inverted lists);
  * peak RSS of a build at each size of --rss-sizes (each in its own process),
    to show that the build streams (memory does not grow with the pool).

Synthetic features: L=28 layers, K=20, width 3072 (Qwen3-1.7B-like fwd_up),
neuron popularity Zipf-like per layer (rank r drawn with density ~ r^(-2/3)
over a per-layer random order of the neurons), K distinct neurons per layer,
fixed seed. Pools carry docid, token_num and dataset, no text, so the sizes
are the index's own cost per document.

    python benchmarks/bench_index.py --smoke
    python benchmarks/bench_index.py --n 1000000 --rss-sizes 1000000,4000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

L, K, WIDTH = 28, 20, 3072
SEED = 1234
CHUNK = 65_536


def bench_spec():
    from nagindex.schemas import FeatureSpec

    return FeatureSpec(
        backbone="synthetic-qwen3-1.7b-like", backbone_hash="synthetic-seed-1234", num_layers=L, top_k=K,
        neuron_types=("fwd_up",), layer_widths={"fwd_up": WIDTH}, tokenizer="synthetic",
    )


def zipf_features(rng: np.random.Generator, n: int, popularity: np.ndarray) -> np.ndarray:
    """(n, L*K) uint16: per layer K distinct neurons, low popularity ranks far more likely.

    Ranks u^3 * (width - K) have density ~ r^(-2/3) (Zipf-like); sorting them and
    adding 0..K-1 makes them distinct; `popularity[l]` maps rank -> neuron.
    """
    u = rng.random((n, L, K), dtype=np.float32)
    ranks = np.floor(u**3 * (WIDTH - K)).astype(np.int32)
    ranks.sort(axis=2)
    ranks += np.arange(K, dtype=np.int32)
    neurons = popularity[np.arange(L)[None, :, None], ranks]  # (n, L, K)
    return neurons.reshape(n, L * K).astype(np.uint16)


def layer_popularity() -> np.ndarray:
    rng = np.random.default_rng(SEED)
    return np.stack([rng.permutation(WIDTH) for _ in range(L)]).astype(np.int32)


def write_synthetic(directory: Path, name: str, start: int, n: int) -> tuple[Path, Path]:
    """Pool parquet + nagindex feature parquet for docs start..start+n, written in chunks.

    Files already in `directory` with the right row count are reused (same seed, same data).
    """
    from nagindex.schemas import features_schema

    spec = bench_spec()
    popularity = layer_popularity()
    pool_path, feat_path = directory / f"{name}.pool.parquet", directory / f"{name}.features.parquet"
    if pool_path.exists() and feat_path.exists():
        if pq.ParquetFile(pool_path).metadata.num_rows == n == pq.ParquetFile(feat_path).metadata.num_rows:
            return pool_path, feat_path
    # pools carry their text (the store keeps it as payload); a short stand-in keeps the files small
    pool_schema = pa.schema([("docid", pa.string()), ("doc", pa.string()), ("token_num", pa.int64()), ("dataset", pa.string())])
    with pq.ParquetWriter(pool_path, pool_schema) as pool_w, pq.ParquetWriter(feat_path, features_schema(spec)) as feat_w:
        for lo in range(start, start + n, CHUNK):
            m = min(CHUNK, start + n - lo)
            rng = np.random.default_rng([SEED, lo])
            ids = pa.array([f"doc{i:09d}" for i in range(lo, lo + m)], pa.string())
            tokens = rng.integers(50, 2000, size=m)
            text = pa.array([f"synthetic document {i}" for i in range(lo, lo + m)], pa.string())
            pool_w.write_table(pa.table({"docid": ids, "doc": text, "token_num": tokens, "dataset": pa.array(["synthetic"] * m)}, schema=pool_schema))
            feats = zipf_features(rng, m, popularity)
            col = pa.FixedSizeListArray.from_arrays(pa.array(feats.ravel()), L * K)
            feat_w.write_table(pa.Table.from_arrays([ids, col], schema=features_schema(spec)))
    return pool_path, feat_path


def sizes(index_dir: Path) -> dict:
    out = {"lance": 0, "forward": 0, "postings": 0, "other": 0}
    for root, _, files in os.walk(index_dir):
        for f in files:
            size = os.path.getsize(os.path.join(root, f))
            if ".lance" in root:
                out["lance"] += size
            elif f.startswith("postings."):
                out["postings"] += size
            elif f.startswith(("features.", "token_num", "docids")):
                out["forward"] += size
            else:
                out["other"] += size
    out["total"] = sum(out.values())
    return out


# -- worker: one timed operation in its own process (for peak RSS) -------------------------


class MemorySampler:
    """Peak resident memory of this process, split into anonymous (heap) and file-backed
    (mapped index files, reclaimable page cache) parts, sampled every 50 ms; VmHWM is
    the kernel's own high-water mark of the whole, read at the last sample."""

    def __init__(self):
        import threading

        self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0, "VmHWM": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":")[0]
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(line.split()[1]) // 1024)

    def _run(self):
        while not self._stop.wait(0.05):
            self._sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def worker(args: list[str]) -> None:
    import faiss  # noqa: F401  (imported before the clock starts: process start-up is not indexing)
    import lancedb  # noqa: F401

    from nagindex import Index

    op, index_dir, *rest = args
    files = [Path(p) for p in rest]
    pools, feats = files[: len(files) // 2], files[len(files) // 2 :]
    started = time.perf_counter()
    with MemorySampler() as memory:
        if op == "build":
            index = Index.build(index_dir, pools, features=feats, progress=False, embedder=None)
        else:
            index = Index.open(index_dir)
            index.append(pools, features=feats, progress=False)
    seconds = time.perf_counter() - started
    # VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across exec, so a worker
    # started by the benchmark (which holds the generated pool) would report the parent's peak
    print(json.dumps({
        "op": op, "seconds": seconds, "peak_rss_mb": memory.peak["VmHWM"], "peak_anon_mb": memory.peak["RssAnon"],
        "peak_file_mb": memory.peak["RssFile"], "documents": index.num_documents,
    }))


def run_worker(op: str, index_dir: Path, pools: list[Path], feats: list[Path]) -> dict:
    cmd = [sys.executable, __file__, "--worker", op, str(index_dir), *map(str, pools), *map(str, feats)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{op} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="Pool size for throughput/append/size (default 1,000,000).")
    parser.add_argument("--smoke", action="store_true", help="Tiny run (20,000 documents) to check the script works.")
    parser.add_argument("--rss-sizes", default="", help="Comma-separated pool sizes for the peak-RSS builds (e.g. 1000000,4000000).")
    parser.add_argument("--workdir", default=None, help="Where to write data and indexes (default: a temp dir, removed after).")
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    n = 20_000 if args.smoke else args.n
    delta = max(n // 10, 1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="nag-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"n": n, "delta": delta, "L": L, "K": K, "width": WIDTH}
    try:
        t = time.perf_counter()
        base_pool, base_feat = write_synthetic(work, "base", 0, n)
        delta_pool, delta_feat = write_synthetic(work, "delta", n, delta)
        report["generate_s"] = time.perf_counter() - t
        print(f"generated {n} + {delta} synthetic documents in {report['generate_s']:.1f}s", flush=True)

        build = run_worker("build", work / "idx", [base_pool], [base_feat])
        report["build"] = build | {"docs_per_s": n / build["seconds"]}
        report["size_base"] = sizes(work / "idx")
        print(f"build {n}: {build['seconds']:.1f}s, {n / build['seconds']:,.0f} docs/s, peak RSS {build['peak_rss_mb']:.0f} MiB (anonymous {build['peak_anon_mb']} MiB)", flush=True)
        append = run_worker("append", work / "idx", [delta_pool], [delta_feat])
        report["append"] = append
        print(f"append +{delta}: {append['seconds']:.1f}s", flush=True)
        shutil.rmtree(work / "idx")
        rebuild = run_worker("build", work / "rebuilt", [base_pool, delta_pool], [base_feat, delta_feat])
        report["rebuild"] = rebuild
        report["append_vs_rebuild"] = append["seconds"] / rebuild["seconds"]
        report["size_rebuilt"] = sizes(work / "rebuilt")
        report["bytes_per_doc"] = {k: v / (n + delta) for k, v in report["size_rebuilt"].items()}
        print(f"rebuild {n + delta}: {rebuild['seconds']:.1f}s; append/rebuild = {report['append_vs_rebuild']:.3f}", flush=True)
        shutil.rmtree(work / "rebuilt")

        report["rss"] = []
        for size in [int(s) for s in args.rss_sizes.split(",") if s.strip()]:
            if size == n:  # the build above measured it already
                report["rss"].append({"documents": size} | build)
                continue
            pool, feat = write_synthetic(work, f"rss{size}", 0, size)
            res = run_worker("build", work / f"rss{size}", [pool], [feat])
            report["rss"].append({"documents": size} | res)
            print(f"peak RSS building {size}: {res['peak_rss_mb']:.0f} MiB, anonymous {res['peak_anon_mb']} MiB ({res['seconds']:.1f}s)", flush=True)
            shutil.rmtree(work / f"rss{size}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    b = report["bytes_per_doc"]
    print()
    print("| figure | value |")
    print("|---|---|")
    print(f"| build from features, {n:,} docs | {report['build']['seconds']:.1f} s, {report['build']['docs_per_s']:,.0f} docs/s |")
    print(f"| append +{delta:,} docs | {report['append']['seconds']:.1f} s |")
    print(f"| full rebuild, {n + delta:,} docs | {report['rebuild']['seconds']:.1f} s |")
    print(f"| append / rebuild | {report['append_vs_rebuild']:.3f} (goal <= 0.15) |")
    print(f"| size on disk per doc | {b['total']:.0f} B (Lance {b['lance']:.0f}, forward index {b['forward']:.0f}, inverted lists {b['postings']:.0f}) |")
    for r in report["rss"]:
        print(f"| peak RSS, build of {r['documents']:,} docs | {r['peak_rss_mb']:.0f} MiB, of it anonymous {r['peak_anon_mb']} MiB ({r['seconds']:.1f} s) |")
    print()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
