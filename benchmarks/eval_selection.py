"""Does it select the right data? NAG against the baselines on real labelled text.

The labelled corpus (../shared/eval, see its README) has a pool of documents in
12 domains and benchmark target sets, each with its matching pool domain. For
each target with a matching domain this script ranks one pool (a stratified
subsample, `--per-domain` documents of each domain, fixed seed) for
`--targets-per-set` items of the target (fixed seed) with every method, and
reports the share of the selected documents that come from the matching domain:

- at a token budget (`--budget`, default 5% of the pool's tokens, SPEC 3), and
- at the top `--top` documents (default 500),

beside the share that random selection gets. Methods (all on the same pool,
targets and budget): NAG as the SPEC defines it (embedded backbone, fwd_up,
K=20, all layers, power 1), NAG variants (layers, K, neuron types, power,
pool contrast), TF-IDF and MiniLM cosine to the target centroid, DSIR, random.

NAG features come from `nagindex.extraction.features.extract_texts` and NAG scores from
`nagindex.ranking.scoring` -- the code users run. Features are extracted once at the
largest K and cut per layer for smaller K (top-K is sorted, so the first K of
the top-50 are the top-K; checked on a sample at run time). Features,
embeddings and token counts are cached under `--cache` so reruns are cheap.

Outputs in `--out` (default benchmarks/results): `eval_selection.md` (tables:
precision per target x method and the mean, wall times, length leak),
`eval_selection.png` (bar chart), `eval_selection.json` (all numbers).

    python benchmarks/eval_selection.py --per-domain 400 --targets-per-set 200
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from nagindex.ranking import baselines  # noqa: E402
from nagindex.errors import NagError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_EVAL_DIR = REPO.parent / "shared" / "eval"
CONTROL_TARGETS = ("winogrande",)  # no matching domain: reported apart

# Features are extracted once per neuron type at this K; smaller K are prefixes.
EXTRACT_K = {"fwd_up": 50}
OTHER_TYPES_K = 20


def extract_k(neuron_type: str) -> int:
    return EXTRACT_K.get(neuron_type, OTHER_TYPES_K)


# ---------------------------------------------------------------------------
# Data: stratified pool, sampled targets
# ---------------------------------------------------------------------------


def read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def stratified_sample(records: Sequence[dict], per_domain: int, seed: int) -> list[dict]:
    """Up to `per_domain` records of each domain, drawn with a fixed seed, in domain then id order."""
    rng = random.Random(seed)
    by_domain: dict[str, list[dict]] = {}
    for r in records:
        by_domain.setdefault(r["domain"], []).append(r)
    out: list[dict] = []
    for domain in sorted(by_domain):
        rows = sorted(by_domain[domain], key=lambda r: r["id"])
        picked = rows if len(rows) <= per_domain else rng.sample(rows, per_domain)
        out.extend(sorted(picked, key=lambda r: r["id"]))
    return out


@dataclass
class Target:
    name: str
    domain: str | None
    texts: list[str]


def load_targets(eval_dir: Path, per_set: int, seed: int, names: Sequence[str] | None = None) -> list[Target]:
    targets = []
    for path in sorted((eval_dir / "targets").glob("*.jsonl.gz")):
        name = path.name.removesuffix(".jsonl.gz")
        if names and name not in names:
            continue
        items = sorted(read_jsonl_gz(path), key=lambda r: r["id"])
        rng = random.Random(f"{seed}:{name}")
        picked = items if len(items) <= per_set else rng.sample(items, per_set)
        targets.append(Target(name, picked[0]["domain"], [r["text"] for r in picked]))
    return targets


# ---------------------------------------------------------------------------
# The measure: pure functions
# ---------------------------------------------------------------------------


def rank(scores: np.ndarray, docids: Sequence[str]) -> np.ndarray:
    """Pool positions best first: score descending, docid ascending on ties (SPEC 3)."""
    docid_order = np.argsort(np.asarray(docids, dtype=object), kind="stable")
    docid_rank = np.empty(len(docids), dtype=np.int64)
    docid_rank[docid_order] = np.arange(len(docids))
    return np.lexsort((docid_rank, -np.asarray(scores)))


def budget_prefix(order: np.ndarray, token_num: np.ndarray, fraction: float) -> np.ndarray:
    """The longest prefix of `order` whose tokens fit floor(total * fraction); at least one row."""
    budget = int(np.floor(token_num.sum() * fraction))
    cum = np.cumsum(token_num[order])
    n = int(np.searchsorted(cum, budget, side="right"))
    return order[: max(n, 1)]


def precision(selected: np.ndarray, is_match: np.ndarray) -> float:
    """Share of the selected pool rows that come from the matching domain."""
    return float(is_match[selected].mean()) if len(selected) else 0.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


# ---------------------------------------------------------------------------
# Features, cached
# ---------------------------------------------------------------------------


def cache_key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_arrays(path: Path, compute: Callable[[], dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], float]:
    """Load arrays from `path` or compute and save them; returns (arrays, seconds spent computing)."""
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}, 0.0
    t0 = time.perf_counter()
    arrays = compute()
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    (path.with_suffix(".seconds")).write_text(f"{seconds:.3f}\n")
    return arrays, seconds


def recorded_seconds(path: Path, seconds: float) -> float:
    """Compute time of a cached artefact: measured now, or as recorded when it was made."""
    if seconds:
        return seconds
    rec = path.with_suffix(".seconds")
    return float(rec.read_text()) if rec.is_file() else float("nan")


def truncate_k(features: np.ndarray, num_layers: int, k_from: int, k_to: int) -> np.ndarray:
    """Per layer, the first k_to of k_from sorted top-K indices = the top-k_to (layer-major)."""
    n = features.shape[0]
    return np.ascontiguousarray(features.reshape(n, num_layers, k_from)[:, :, :k_to].reshape(n, num_layers * k_to))


# ---------------------------------------------------------------------------
# NAG through the product's scoring API
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NagVariant:
    """One NAG configuration: neuron types (scores summed), K, layers, power, pool contrast."""

    name: str
    neuron_types: tuple[str, ...] = ("fwd_up",)
    top_k: int = 20
    layers: tuple[int, ...] | str | None = None
    power: float = 1.0
    contrast: bool = False
    max_length: int | None = None  # None: the run's --max-length
    note: str = ""


def nag_variants(num_layers: int, types_available: Sequence[str],
                 extra_max_lengths: Sequence[int] = ()) -> list[NagVariant]:
    v = [
        NagVariant("NAG (SPEC)", note="fwd_up, K=20, all layers, power 1"),
        NagVariant("NAG last layer", layers="last"),
        NagVariant("NAG layer 3", layers=(3,)),
        NagVariant("NAG layers 0-7", layers=tuple(range(8))),
        NagVariant("NAG K=5", top_k=5),
        NagVariant("NAG K=50", top_k=50),
        NagVariant("NAG power 0.5", power=0.5),
        NagVariant("NAG power 2", power=2.0),
        NagVariant("NAG contrast", contrast=True, note="pool contrast, K=20"),
        NagVariant("NAG contrast K=50", top_k=50, contrast=True),
        NagVariant("NAG contrast layers 0-7", layers=tuple(range(8)), contrast=True),
        NagVariant("NAG contrast K=50 layers 0-7", top_k=50, layers=tuple(range(8)), contrast=True),
    ]
    for ml in extra_max_lengths:
        v.append(NagVariant(f"NAG max_length {ml}", max_length=ml))
        v.append(NagVariant(f"NAG contrast K=50 max_length {ml}", top_k=50, contrast=True, max_length=ml))
    for t in types_available:
        if t != "fwd_up":
            v.append(NagVariant(f"NAG {t}", neuron_types=(t,)))
    if len(types_available) > 1:
        v.append(NagVariant("NAG all types contrast", neuron_types=tuple(types_available), contrast=True))
    return v


def nag_scores(
    variant: NagVariant,
    pool_feats: dict[str, np.ndarray],
    target_feats: dict[str, np.ndarray],
    num_layers: int,
    widths: dict[str, int],
) -> np.ndarray:
    """Score the pool for one target with nagindex.ranking.scoring; several types add their similarities."""
    from nagindex.ranking import scoring

    total = np.zeros(next(iter(pool_feats.values())).shape[0], dtype=np.float64)
    for t in variant.neuron_types:
        k_have = extract_k(t)
        if variant.top_k > k_have:
            raise NagError(f"{variant.name}: K={variant.top_k} but {t} was extracted at K={k_have}")
        pool = truncate_k(pool_feats[t], num_layers, k_have, variant.top_k)
        target = truncate_k(target_feats[t], num_layers, k_have, variant.top_k)
        kwargs = dict(num_layers=num_layers, top_k=variant.top_k, width=widths[t], power=variant.power)
        if variant.layers is not None:
            kwargs["layers"] = variant.layers
        if variant.contrast:
            kwargs.update(contrast="pool", pool_size=pool.shape[0], pool_counts=scoring.layer_counts(
                pool, num_layers=num_layers, top_k=variant.top_k, width=widths[t]))
        profile = scoring.build_profile(target, **kwargs)
        raw = scoring.score_features(pool, profile)
        if len(variant.neuron_types) == 1:
            return raw  # exact integers: ties stay ties, docid decides
        total += profile.similarity(raw)
    return total


def nag_features(cfg, cache: Path, types: Sequence[str], texts: list[str], backbone,
                 max_length: int) -> tuple[dict, float]:
    """{type: {"f": uint16 (n, L*K_type), "num_layers", "width"}} for `texts`, from the cache
    or extracted in one pass at the largest K needed; returns (features, extraction seconds)."""
    paths = {t: cache / f"nag_{t}_K{extract_k(t)}_ml{max_length}.npz" for t in types}
    missing = [t for t in types if not paths[t].is_file()]
    if missing:
        from nagindex.extraction.features import extract_texts

        bb = backbone()
        k = max(extract_k(t) for t in missing)
        t0 = time.perf_counter()
        f = extract_texts(bb, texts, neuron_types=tuple(missing), top_k=k, max_length=max_length,
                          batch_size=cfg.batch_size, progress=cfg.progress)
        seconds = time.perf_counter() - t0
        cache.mkdir(parents=True, exist_ok=True)
        for t in missing:
            arrays = {"f": truncate_k(f[t], bb.num_layers, k, extract_k(t)), "num_layers": np.array(bb.num_layers),
                      "width": np.array(bb.width(t)), "seconds": np.array(seconds),
                      "device": np.array(str(bb.device))}
            tmp = paths[t].with_name(paths[t].name + ".tmp.npz")
            np.savez_compressed(tmp, **arrays)
            os.replace(tmp, paths[t])
    out = {}
    for t in types:
        with np.load(paths[t]) as z:
            out[t] = {k: z[k] for k in z.files}
        if out[t]["f"].shape[0] != len(texts):
            raise NagError(f"cached features {paths[t]} do not match the texts; delete {cache}")
    return out, float(out[types[0]]["seconds"])


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


@dataclass
class Config:
    eval_dir: Path = DEFAULT_EVAL_DIR
    per_domain: int = 400
    targets_per_set: int = 200
    top: int = 500
    budget: float = 0.05
    seed: int = 0
    max_length: int = 120
    batch_size: int = 32
    neuron_types: tuple[str, ...] = ("fwd_up",)
    targets: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()  # empty: all
    cache: Path = REPO / "runs" / "eval_cache"
    progress: bool = True
    dtype: str | None = None  # backbone dtype; None: fp32 on CPU, bf16 on CUDA
    extra_max_lengths: tuple[int, ...] = ()  # NAG rows with other extraction lengths
    extract_only: bool = False  # fill the feature cache and stop (e.g. on a GPU machine)


@dataclass
class Results:
    config: dict
    pool_size: int
    pool_tokens: int
    domain_share: dict[str, float]
    targets: list[dict]  # name, domain, items
    methods: list[str]
    notes: dict[str, str]
    precision_top: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> target -> p
    precision_budget: dict[str, dict[str, float]] = field(default_factory=dict)
    control: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # method -> target -> domain shares
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> {prepare, score}
    length_leak: dict[str, float] = field(default_factory=dict)
    budget_docs: dict[str, dict[str, int]] = field(default_factory=dict)

    def mean(self, table: dict[str, dict[str, float]], method: str) -> float:
        return float(np.mean(list(table[method].values())))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cfg: Config) -> Results | None:
    pool_records = stratified_sample(read_jsonl_gz(cfg.eval_dir / "pool.jsonl.gz"), cfg.per_domain, cfg.seed)
    docids = [r["id"] for r in pool_records]
    pool_texts = [r["text"] for r in pool_records]
    domains = np.array([r["domain"] for r in pool_records])
    targets = load_targets(cfg.eval_dir, cfg.targets_per_set, cfg.seed, cfg.targets or None)
    if not targets:
        raise NagError("no target sets selected")
    all_target_texts = [t for tg in targets for t in tg.texts]
    bounds = np.cumsum([0] + [len(t.texts) for t in targets])
    _log(f"pool: {len(docids)} documents, {len(set(domains))} domains; targets: "
         + ", ".join(f"{t.name} ({len(t.texts)})" for t in targets))

    data_key = cache_key(cfg.seed, cfg.targets_per_set, sorted(t.name for t in targets),
                         hashlib.sha256("\n".join(docids).encode()).hexdigest())
    cache = cfg.cache / data_key
    want = set(cfg.methods)

    def wanted(name: str) -> bool:
        return not want or any(name == w or name.startswith(w) for w in want)

    backbone_holder: dict = {}

    def backbone():
        if "bb" not in backbone_holder:
            from nagindex.extraction.backbones import load_backbone

            backbone_holder["bb"] = load_backbone(None, dtype=cfg.dtype)
        return backbone_holder["bb"]

    # Token counts of the pool with the embedded tokenizer (the budget's unit).
    def count() -> dict[str, np.ndarray]:
        from nagindex.extraction.features import count_tokens

        return {"token_num": np.asarray(count_tokens(backbone().tokenizer, pool_texts), dtype=np.int64)}

    token_num = cached_arrays(cache / "token_num.npz", count)[0]["token_num"]

    seconds: dict[str, dict[str, float]] = {}
    scores: dict[str, list[np.ndarray]] = {}  # method -> per target
    notes: dict[str, str] = {}

    scorers: dict[str, Callable] = {}  # method -> f(target index, item positions) -> scores

    def score_all(method: str, per_target: Callable[[int, np.ndarray], np.ndarray]) -> None:
        scorers[method] = per_target
        t0 = time.perf_counter()
        scores[method] = [per_target(i, np.arange(len(t.texts))) for i, t in enumerate(targets)]
        seconds.setdefault(method, {})["score"] = time.perf_counter() - t0

    # -- NAG ---------------------------------------------------------------
    types = tuple(cfg.neuron_types)
    variants = [v for v in nag_variants(30, types, cfg.extra_max_lengths) if wanted(v.name)]
    texts = pool_texts + all_target_texts
    n_pool = len(docids)
    for ml in sorted({v.max_length or cfg.max_length for v in variants}):
        ml_types = types if ml == cfg.max_length else ("fwd_up",)
        feats, t_extract = nag_features(cfg, cache, ml_types, texts, backbone, max_length=ml)
        if cfg.extract_only:
            _log(f"features (max_length {ml}) cached in {cache} ({t_extract:.0f} s)")
            continue
        num_layers = int(feats["fwd_up"]["num_layers"])
        widths = {t: int(feats[t]["width"]) for t in ml_types}
        pool_feats = {t: feats[t]["f"][:n_pool] for t in ml_types}
        target_feats = [{t: feats[t]["f"][n_pool + a: n_pool + b] for t in ml_types}
                        for a, b in zip(bounds[:-1], bounds[1:])]
        device = str(feats["fwd_up"]["device"])
        for v in variants:
            if (v.max_length or cfg.max_length) != ml:
                continue
            score_all(v.name, lambda i, it, v=v: nag_scores(
                v, pool_feats, {t: f[it] for t, f in target_feats[i].items()}, num_layers, widths))
            seconds[v.name]["prepare"] = t_extract
            notes[v.name] = v.note or ""
        if ml == cfg.max_length and "NAG (SPEC)" in notes:
            notes["NAG (SPEC)"] = (
                f"fwd_up, K=20, all {num_layers} layers, power 1; features of {', '.join(ml_types)} "
                f"extracted in one pass ({len(texts)} texts, max_length {ml}, on {device}; "
                f"extraction time shared by all NAG rows)")
    if cfg.extract_only:
        return None

    # -- TF-IDF --------------------------------------------------------------
    if wanted("TF-IDF"):
        t0 = time.perf_counter()
        vocab = baselines.build_vocabulary(pool_texts, all_target_texts)
        pool_counts = baselines.count_matrix(pool_texts, vocab)
        target_counts = [baselines.count_matrix(t.texts, vocab) for t in targets]
        prep = time.perf_counter() - t0
        score_all("TF-IDF", lambda i, it: baselines.tfidf_centroid_scores_from_counts(
            pool_counts, target_counts[i][it]))
        seconds["TF-IDF"]["prepare"] = prep
        notes["TF-IDF"] = "cosine to the target centroid; raw word counts x (pool IDF + 1), the common default"
        score_all("TF-IDF sublinear", lambda i, it: baselines.tfidf_centroid_scores_from_counts(
            pool_counts, target_counts[i][it], sublinear=True, idf_offset=0.0))
        seconds["TF-IDF sublinear"]["prepare"] = prep
        notes["TF-IDF sublinear"] = "as TF-IDF with 1 + log(count) and IDF without the +1 (tuned here: stronger)"

    # -- MiniLM --------------------------------------------------------------
    if wanted("MiniLM"):
        emb_path = cache / "minilm.npz"
        emb, t_emb = cached_arrays(emb_path, lambda: {"e": baselines.encode_minilm(
            pool_texts + all_target_texts, progress=cfg.progress)})
        e = emb["e"]
        pool_e = e[: len(docids)]
        target_e = [e[len(docids) + a: len(docids) + b] for a, b in zip(bounds[:-1], bounds[1:])]
        score_all("MiniLM", lambda i, it: baselines.embedding_centroid_scores(pool_e, target_e[i][it]))
        seconds["MiniLM"]["prepare"] = recorded_seconds(emb_path, t_emb)
        notes["MiniLM"] = "all-MiniLM-L6-v2 mean-pooled embeddings (256 tokens), cosine to the target centroid"

    # -- DSIR ----------------------------------------------------------------
    if wanted("DSIR"):
        t0 = time.perf_counter()
        pool_h = baselines.hashed_ngram_counts(pool_texts)
        target_h = [baselines.hashed_ngram_counts(t.texts) for t in targets]
        prep = time.perf_counter() - t0
        score_all("DSIR", lambda i, it: baselines.dsir_importance_weights(pool_h, target_h[i][it]))
        seconds["DSIR"]["prepare"] = prep
        notes["DSIR"] = "hashed unigram+bigram (10k buckets), log p_target - log p_pool, top-k"

    if wanted("random"):
        score_all("random", lambda i, it: baselines.random_scores(len(docids), seed=cfg.seed + i))
        seconds["random"]["prepare"] = 0.0
        notes["random"] = "uniform random order"

    # -- measure ---------------------------------------------------------------
    res = Results(
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()},
        pool_size=len(docids),
        pool_tokens=int(token_num.sum()),
        domain_share={d: float((domains == d).mean()) for d in sorted(set(domains))},
        targets=[{"name": t.name, "domain": t.domain, "items": len(t.texts)} for t in targets],
        methods=list(scores),
        notes=notes,
        seconds=seconds,
    )
    for method, per_target in scores.items():
        res.precision_top[method], res.precision_budget[method], res.budget_docs[method] = {}, {}, {}
        for tg, s in zip(targets, per_target):
            order = rank(s, docids)
            top = order[: cfg.top]
            if tg.domain is None:
                res.control.setdefault(method, {})[tg.name] = {
                    d: float((domains[top] == d).mean()) for d in sorted(set(domains))}
                continue
            match = domains == tg.domain
            res.precision_top[method][tg.name] = precision(top, match)
            chosen = budget_prefix(order, token_num, cfg.budget)
            res.precision_budget[method][tg.name] = precision(chosen, match)
            res.budget_docs[method][tg.name] = int(len(chosen))
    leak_methods = [m for m in scorers if m in LENGTH_LEAK_METHODS or not m.startswith("NAG")]
    res.length_leak = length_leak(targets, {m: scorers[m] for m in leak_methods}, docids, token_num, cfg.top)
    return res


# NAG rows whose length leak is measured (each costs 4 extra scorings per target).
LENGTH_LEAK_METHODS = ("NAG (SPEC)", "NAG K=50", "NAG contrast", "NAG contrast K=50", "NAG contrast K=50 layers 0-7",
                       "NAG contrast K=50 max_length 256")
LENGTH_GROUPS = 4


def length_leak(targets: list[Target], scorers: dict[str, Callable], docids, token_num, top: int) -> dict[str, float]:
    """Does the length of the target items steer which documents are picked?

    Within each matched target, split its items into LENGTH_GROUPS groups by
    length (chars), rank the pool for each group alone, and pair the group's
    mean item length with the mean token_num of its top documents. The result
    is the Pearson correlation of those pairs pooled over targets after
    centring each target's pairs (so differences between targets' domains do
    not count): near 0, length does not leak; near 1, short items pull short
    documents.
    """
    out = {}
    matched = [i for i, t in enumerate(targets) if t.domain is not None]
    groups = {}
    for i in matched:
        lengths = np.array([len(x) for x in targets[i].texts])
        groups[i] = [(g, float(lengths[g].mean())) for g in np.array_split(np.argsort(lengths, kind="stable"),
                                                                             LENGTH_GROUPS)]
    for method, fn in scorers.items():
        xs, ys = [], []
        for i in matched:
            x = np.array([mean_len for _, mean_len in groups[i]])
            y = np.array([token_num[rank(fn(i, g), docids)[:top]].mean() for g, _ in groups[i]])
            xs.extend(x - x.mean())
            ys.extend(y - y.mean())
        out[method] = pearson(xs, ys)
    return out


# ---------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------


def markdown(res: Results) -> str:
    matched = [t["name"] for t in res.targets if t["domain"] is not None]
    doms = {t["name"]: t["domain"] for t in res.targets}
    cfg = res.config
    lines = [
        f"Pool: {res.pool_size} documents ({cfg['per_domain']} per domain at most, seed {cfg['seed']}, "
        f"{res.pool_tokens:,} tokens); {cfg['targets_per_set']} items per target set.",
        "",
    ]

    def table(title: str, data: dict[str, dict[str, float]]) -> None:
        lines.append(f"### {title}")
        lines.append("")
        lines.append("| method | " + " | ".join(f"{n} ({doms[n]})" for n in matched) + " | mean |")
        lines.append("|---|" + "---:|" * (len(matched) + 1))
        rnd = {n: res.domain_share[doms[n]] for n in matched}
        lines.append("| *random share* | " + " | ".join(f"{rnd[n]:.3f}" for n in matched)
                     + f" | {np.mean(list(rnd.values())):.3f} |")
        for m in sorted(data, key=lambda m: -res.mean(data, m)):
            lines.append(f"| {m} | " + " | ".join(f"{data[m][n]:.3f}" for n in matched)
                         + f" | **{res.mean(data, m):.3f}** |")
        lines.append("")

    table(f"Precision at the top {cfg['top']} documents", res.precision_top)
    budget_docs = {m: int(np.mean(list(v.values()))) for m, v in res.budget_docs.items() if v}
    table(f"Precision at a budget of {cfg['budget']:.0%} of pool tokens "
          f"({min(budget_docs.values())}-{max(budget_docs.values())} documents)", res.precision_budget)

    lines += ["### Wall time (seconds)", "",
              "| method | features / vectors | scoring (all targets) | notes |", "|---|---:|---:|---|"]
    for m in res.methods:
        s = res.seconds[m]
        lines.append(f"| {m} | {s.get('prepare', float('nan')):.1f} | {s['score']:.2f} | {res.notes.get(m, '')} |")
    lines.append("")
    lines += ["### Length leak", "",
              f"Each target's items split into {LENGTH_GROUPS} groups by length; each group ranks the pool alone. "
              "Correlation between a group's mean item length and the mean token count of its top "
              f"{cfg['top']} documents, within targets (centred per target), pooled over the targets "
              "(near 0: the items' length does not steer the selection).", "",
              "| method | correlation |", "|---|---:|"]
    for m in res.length_leak:
        lines.append(f"| {m} | {res.length_leak[m]:+.2f} |")
    lines.append("")
    if res.control:
        lines += [f"### Control target (no matching domain): domains of the top {cfg['top']}", "",
                  "| method | target | top domains |", "|---|---|---|"]
        for m, per in res.control.items():
            for name, shares in per.items():
                best = sorted(shares.items(), key=lambda kv: -kv[1])[:3]
                lines.append(f"| {m} | {name} | " + ", ".join(f"{d} {s:.2f}" for d, s in best) + " |")
        lines.append("")
    return "\n".join(lines)


def bar_chart(res: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted(res.precision_top, key=lambda m: res.mean(res.precision_top, m))
    matched = [t["name"] for t in res.targets if t["domain"] is not None]
    fig, ax = plt.subplots(figsize=(9, 0.38 * len(methods) + 1.6))
    y = np.arange(len(methods))
    means = [res.mean(res.precision_top, m) for m in methods]
    colors = ["#c44e52" if m.startswith("NAG") else "#4c72b0" for m in methods]
    ax.barh(y, means, color=colors, alpha=0.85)
    markers = "osD^vP*X"
    for j, name in enumerate(matched):
        ax.scatter([res.precision_top[m][name] for m in methods], y, s=14, color="k",
                   marker=markers[j % len(markers)], label=name, zorder=3)
    rnd = np.mean([res.domain_share[t["domain"]] for t in res.targets if t["domain"] is not None])
    ax.axvline(rnd, color="gray", ls="--", lw=1, label="random share")
    ax.set_yticks(y, methods)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"precision at the top {res.config['top']} (bar: mean over targets; marks: each target)")
    ax.set_title(f"Matching-domain precision, {res.pool_size}-document pool, "
                 f"{res.config['targets_per_set']} items per target")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_outputs(res: Results, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "eval_selection.md", "png": out / "eval_selection.png", "json": out / "eval_selection.json"}
    for key, text in (("md", markdown(res)), ("json", json.dumps(res.__dict__, indent=1, default=str))):
        tmp = paths[key].with_name(paths[key].name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, paths[key])
    bar_chart(res, paths["png"])
    return paths


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, Path]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval-dir", type=Path, default=DEFAULT_EVAL_DIR, help="labelled corpus (pool.jsonl.gz, targets/)")
    p.add_argument("--per-domain", type=int, default=400, help="pool documents per domain (default 400)")
    p.add_argument("--targets-per-set", type=int, default=200, help="items drawn from each target set (default 200)")
    p.add_argument("--top", type=int, default=500, help="precision at the top N documents (default 500)")
    p.add_argument("--budget", type=float, default=0.05, help="token budget as a fraction of the pool (default 0.05)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-length", type=int, default=120, help="tokens per text for NAG extraction (default 120)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--neuron-types", default="fwd_up",
                   help="neuron types to extract and compare, comma separated, or 'all' (default fwd_up)")
    p.add_argument("--dtype", default=None, help="backbone dtype (default: fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--extra-max-lengths", default="",
                   help="also compare NAG at these max_length values, comma separated (default none)")
    p.add_argument("--extract-only", action="store_true", help="fill the feature cache, then stop")
    p.add_argument("--targets", default="", help="target sets to use, comma separated (default all)")
    p.add_argument("--methods", default="", help="methods to run, comma separated name prefixes (default all)")
    p.add_argument("--cache", type=Path, default=REPO / "runs" / "eval_cache", help="feature cache folder")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    a = p.parse_args(argv)
    from nagindex.schemas import NEURON_TYPES, parse_neuron_types

    types = parse_neuron_types(NEURON_TYPES if a.neuron_types == "all" else a.neuron_types)
    if "fwd_up" not in types:
        types = ("fwd_up",) + types
    cfg = Config(eval_dir=a.eval_dir, per_domain=a.per_domain, targets_per_set=a.targets_per_set, top=a.top,
                 budget=a.budget, seed=a.seed, max_length=a.max_length, batch_size=a.batch_size,
                 neuron_types=types, targets=tuple(x for x in a.targets.split(",") if x),
                 methods=tuple(x for x in a.methods.split(",") if x), cache=a.cache,
                 extract_only=a.extract_only, dtype=a.dtype,
                 extra_max_lengths=tuple(int(x) for x in a.extra_max_lengths.split(",") if x))
    return cfg, a.out


def main(argv: Sequence[str] | None = None) -> None:
    cfg, out = parse_args(argv)
    t0 = time.perf_counter()
    res = run(cfg)
    if res is None:
        return
    paths = write_outputs(res, out)
    print(markdown(res))
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
