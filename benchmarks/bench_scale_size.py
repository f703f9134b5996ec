"""On-disk bytes per document of a NAG index: real eval-pool text, synthetic Qwen3-1.7B-shaped features."""
import gzip, json, os, sys, time, shutil
from pathlib import Path
import numpy as np, pyarrow as pa
from nagindex.schemas import FeatureSpec
from nagindex import Index
N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
L, K, W = 28, 20, 6144
texts, ids = [], []
for i, line in enumerate(gzip.open("/work/shared/eval/pool.jsonl.gz", "rt")):
    if i >= N: break
    r = json.loads(line); texts.append(r["text"]); ids.append(str(r["id"]))
n = len(texts)
rng = np.random.default_rng(0)
# per layer K distinct neurons, drawn from a skewed distribution like real NAGs
feats = np.empty((n, L * K), dtype=np.uint16)
p = 1.0 / np.arange(1, W + 1) ** 0.8; p /= p.sum()
for l in range(L):
    perm = rng.permutation(W)
    for i in range(n):
        feats[i, l*K:(l+1)*K] = perm[rng.choice(W, K, replace=False, p=p)]
docs = pa.table({"docid": ids, "doc": texts, "token_num": pa.array([max(1, len(t) // 4) for t in texts], pa.int64()),
                 "dataset": ["eval"] * n})
spec = FeatureSpec(backbone="synthetic-qwen3-1.7b-shape", backbone_hash="0"*16, num_layers=L, top_k=K,
                   neuron_types=("fwd_up",), layer_widths={"fwd_up": W})
path = Path("/tmp/nag-bench-sizeidx"); shutil.rmtree(path, ignore_errors=True)
t = time.perf_counter()
idx = Index.create(path, spec); idx.append(documents=docs, feature_arrays={"fwd_up": feats}, progress=False)
el = time.perf_counter() - t
def du(p): return sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file())
lance = sum(du(d) for d in path.glob("*.lance"))
seg = path / "segments"
kinds = {}
for f in seg.rglob("*"):
    if f.is_file():
        k = f.name.split(".")[0]
        kinds[k] = kinds.get(k, 0) + f.stat().st_size
text_bytes = sum(len(t.encode()) for t in texts)
print(f"docs={n} append_s={el:.1f} docs_per_s={n/el:,.0f} text_bytes_per_doc={text_bytes/n:.0f}")
print(f"lance_bytes_per_doc={lance/n:.0f} (text+payload+features+_row)")
for k, v in sorted(kinds.items()): print(f"segment {k}: {v/n:.0f} bytes/doc")
print(f"total_bytes_per_doc={du(path)/n:.0f}")
