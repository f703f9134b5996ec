"""The query service (`nag serve`) against the cold CLI (`nag query`), and a bounded load test.

Builds an index of the bundled demo pool (its first --docs documents, the
embedded SmolLM2-135M, K=--k, no embedding unless --embedder), then measures:

1. a cold `nag query` of a --targets-item text target (a new process: imports,
   opening the index, loading the backbone, extraction, the query);
2. the same query sent warm to `nag serve` (a server process started once;
   the backbone already loaded): a target set the server has not seen (the
   backbone runs: the median over --repeat different sets of --targets
   items), the same set asked again (the server remembers the features of
   the last 64 target sets it extracted), and the target given as features
   (no extraction at all), each the median of --repeat;
3. a load test: --requests feature queries, --concurrency at a time, from
   threads of this process, with latency percentiles and throughput.

Answers are compared: the warm text query selects what the cold CLI wrote.
Timing lines are printed; the last line is one JSON object.

    python benchmarks/bench_service.py                 # ~2-4 min on 2 cores
    python benchmarks/bench_service.py --smoke         # tiny random model, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from nagindex import Client, Index  # noqa: E402
from nagindex.io import write_features_parquet  # noqa: E402

DATA = ROOT / "nagindex" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nag(*args: str) -> list[str]:
    return [sys.executable, "-m", "nagindex.cli", *args]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("HF_HUB_OFFLINE", "1")
    return e


def timed_run(cmd: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env())
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t


@contextlib.contextmanager
def served(idx: Path, model_args: list[str] = ()):
    """A `nag serve` process on a free port, ready; yields (client, seconds to ready)."""
    port = free_port()
    t = time.perf_counter()
    server = subprocess.Popen(nag("serve", str(idx), "--port", str(port), *model_args), env=env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = Client(f"http://127.0.0.1:{port}")
    try:
        for _ in range(3000):
            try:
                client.health()
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if server.poll() is not None:
                    raise SystemExit(f"nag serve exited:\n{server.stderr.read()[-2000:]}")
                time.sleep(0.1)
        yield client, time.perf_counter() - t
    finally:
        server.terminate()
        server.wait(timeout=30)


def scale_figures(sizes: list[int], targets: int, top: int, repeat: int) -> dict:
    """A feature target over synthetic pools of `sizes` documents (benchmarks/bench_query.py's:
    Zipf neuron popularity, L=28, K=20): cold `nag query`, warm `Index.query` in this process
    and warm `nag serve`, each the same selection."""
    import bench_query as BQ

    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-service-scale-") as tmp:
        work = Path(tmp)
        for n in sizes:
            print(f"pool of {n:,} documents:")
            idx, _, _, _ = BQ.build_index(work, n, 0, 1.0, f"n{n}")
            target = work / f"target-{n}.parquet"
            BQ.write_target(target, targets, 1, 1.0)
            cold_out = work / f"cold-{n}.parquet"
            cold = timed_run(nag("query", str(idx), "--target-features", str(target), "--top", str(top), "--out",
                                 str(cold_out), "--no-progress"))
            index = Index.open(idx)
            python = []
            for _ in range(repeat):
                t = time.perf_counter()
                got = index.query(target_features=[str(target)], top=top, progress=False)
                python.append(time.perf_counter() - t)
            with served(idx) as (client, startup):
                warm = []
                for _ in range(repeat):
                    t = time.perf_counter()
                    answer = client.query(target_features=[str(target)], top=top)
                    warm.append(time.perf_counter() - t)
            want = pq.read_table(cold_out).column("docid").to_pylist()
            same = answer.column("docid").to_pylist() == want == got.column("docid").to_pylist()
            print(f"  feature target of {targets} items, --top {top}: cold nag query {cold:.2f} s; warm Index.query "
                  f"{statistics.median(python):.3f} s; warm nag serve {statistics.median(warm):.3f} s "
                  f"(server ready in {startup:.1f} s); same selection: {same}")
            out[n] = {"cold_cli_s": cold, "python_s": statistics.median(python), "service_s": statistics.median(warm),
                      "same_selection": same}
    return out


def percentiles(values: list[float]) -> dict:
    a = np.asarray(values) * 1000
    return {f"p{p}": float(np.percentile(a, p)) for p in (50, 90, 95, 99)} | {"max": float(a.max()), "mean": float(a.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--targets", type=int, default=30)
    ap.add_argument("--top", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--embedder", default=None, help="e.g. hash:64 or all-MiniLM-L6-v2 (default: none)")
    ap.add_argument("--smoke", action="store_true", help="tiny random backbone, a few documents and requests")
    ap.add_argument("--scale", default="", help="instead: feature queries over synthetic pools of these sizes, "
                    "e.g. 200000,1000000 (cold CLI, warm Index.query, warm nag serve)")
    args = ap.parse_args()
    if args.scale:
        sizes = [int(x) for x in args.scale.split(",") if x]
        print(json.dumps({"scale": scale_figures(sizes, args.targets, args.top, args.repeat)}))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-service-"))
    model_args: list[str] = []
    if args.smoke:
        from nagindex.extraction.testing import tiny_backbone

        bb = tiny_backbone("llama")
        bb.model.save_pretrained(work / "tiny")
        bb.tokenizer.save_pretrained(work / "tiny")
        model, model_args = str(work / "tiny"), ["--model", str(work / "tiny")]
        args.docs, args.k, args.requests, args.repeat = min(args.docs, 40), min(args.k, 3), min(args.requests, 24), 2
    else:
        model = None
    pool = pq.read_table(DATA / "demo_pool.parquet").slice(0, args.docs)
    all_texts = pq.read_table(DATA / "demo_target_medical.parquet").column("doc").to_pylist()
    texts = all_texts[: args.targets]
    # unseen target sets of the same size: the items shifted by one each time
    unseen = [(all_texts[i:] + all_texts[:i])[: args.targets] for i in range(1, args.repeat + 1)]
    target = work / "target.jsonl"
    target.write_text("".join(json.dumps({"docid": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    idx = work / "idx"
    t = time.perf_counter()
    index = Index.build(idx, pool, model=model, top_k=args.k, embedder=args.embedder, progress=False)
    print(f"built {idx}: {index.num_documents} documents, K={index.spec.top_k}, {time.perf_counter() - t:.1f} s")
    feats = work / "target_features.parquet"
    write_features_parquet(feats, [f"t{i}" for i in range(len(texts))], index.extractor().extract(texts), index.spec)
    del index

    # 1. cold CLI
    cold_text = [timed_run(nag("query", str(idx), str(target), "--top", str(args.top), "--out", str(work / "cold.parquet"),
                               "--no-progress", *model_args)) for _ in range(2)]
    cold_feat = [timed_run(nag("query", str(idx), "--target-features", str(feats), "--top", str(args.top), "--out",
                               str(work / "cold_f.parquet"), "--no-progress")) for _ in range(2)]
    print(f"cold nag query, {len(texts)}-item text target: {', '.join(f'{x:.2f}' for x in cold_text)} s")
    print(f"cold nag query, same target as features: {', '.join(f'{x:.2f}' for x in cold_feat)} s")

    # 2. warm server
    with served(idx, model_args) as (client, startup):
        print(f"nag serve ready (backbone loaded) in {startup:.2f} s")
        got = client.query(target_texts={"target": texts}, top=args.top)  # the cold CLI's target, first seen here
        same = got.column("docid").to_pylist() == pq.read_table(work / "cold.parquet").column("docid").to_pylist()
        warm_text, warm_again, warm_feat = [], [], []
        for other in unseen:
            t = time.perf_counter()
            client.query(target_texts={"target": other}, top=args.top)
            warm_text.append(time.perf_counter() - t)
        for _ in range(args.repeat):
            t = time.perf_counter()
            again = client.query(target_texts={"target": texts}, top=args.top)
            warm_again.append(time.perf_counter() - t)
            t = time.perf_counter()
            client.query(target_features=[str(feats)], top=args.top)
            warm_feat.append(time.perf_counter() - t)
        same_again = again.column("docid").to_pylist() == got.column("docid").to_pylist()
        print(f"warm text query, an unseen {len(texts)}-item target, median of {args.repeat}: "
              f"{statistics.median(warm_text):.3f} s (cold CLI {min(cold_text) / statistics.median(warm_text):.1f}x "
              f"slower); same selection as the CLI: {same}")
        print(f"warm text query, the same target again, median of {args.repeat}: {statistics.median(warm_again):.3f} s "
              f"(cold CLI {min(cold_text) / statistics.median(warm_again):.1f}x slower); same selection: {same_again}")
        print(f"warm feature query, median of {args.repeat}: {statistics.median(warm_feat):.3f} s "
              f"(cold CLI {min(cold_feat) / statistics.median(warm_feat):.1f}x slower)")

        # 3. load
        def one(_):
            t0 = time.perf_counter()
            client.query(target_features=[str(feats)], top=args.top)
            return time.perf_counter() - t0

        t = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool_:
            latencies = list(pool_.map(one, range(args.requests)))
        wall = time.perf_counter() - t
        pct = percentiles(latencies)
        print(f"load: {args.requests} feature queries, {args.concurrency} concurrent: {args.requests / wall:.1f} req/s; "
              "latency ms " + ", ".join(f"{k} {v:.0f}" for k, v in pct.items()))
        health = client.health()
    print(json.dumps({
        "docs": args.docs, "k": args.k, "targets": len(texts), "top": args.top, "smoke": args.smoke,
        "cold_text_s": cold_text, "cold_features_s": cold_feat, "server_startup_s": startup,
        "warm_text_s": statistics.median(warm_text), "warm_text_again_s": statistics.median(warm_again),
        "warm_features_s": statistics.median(warm_feat), "same_selection": same and same_again, "load": {"requests": args.requests, "concurrency": args.concurrency,
                                         "req_per_s": args.requests / wall, "latency_ms": pct},
        "server_ok_after_load": health["status"] == "ok",
    }))


if __name__ == "__main__":
    main()
