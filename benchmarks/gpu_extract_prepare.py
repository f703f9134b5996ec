"""Prepare what `benchmarks/gpu_extract.sh` needs on a machine that cannot download:
the embedded backbone's tokenizer and a fixed-seed sample of real documents.

    python benchmarks/gpu_extract_prepare.py .devcarry [--n 4096]
"""

import argparse
import gzip
import json
import random
from pathlib import Path

from nagindex.extraction.backbones import load_backbone

DEFAULT_POOL = Path(__file__).resolve().parents[2] / "shared" / "eval" / "pool.jsonl.gz"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dest", type=Path)
    p.add_argument("--n", type=int, default=4096, help="documents to sample (default 4096)")
    p.add_argument("--pool", type=Path, default=DEFAULT_POOL)
    args = p.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    load_backbone(device="cpu").tokenizer.save_pretrained(args.dest / "tok")
    with gzip.open(args.pool, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    rng = random.Random(0)
    with gzip.open(args.dest / "docs.jsonl.gz", "wt", encoding="utf-8") as f:
        for i in sorted(rng.sample(range(len(texts)), args.n)):
            f.write(json.dumps({"text": texts[i][:4000]}) + "\n")
    print(f"wrote {args.dest}/tok and {args.n} documents to {args.dest}/docs.jsonl.gz")


if __name__ == "__main__":
    main()
