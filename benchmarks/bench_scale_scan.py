"""Ray scan vs local scan on one machine: 300k docs x 560 uint16 features (synthetic), 1 and 6 targets."""
import time, shutil, sys
from pathlib import Path
import numpy as np, pyarrow as pa
from nagindex.ranking import scoring
from nagindex.ranking import scan as S
from nagindex.ranking import selection
from nagindex.schemas import FeatureSpec
from nagindex import Index
from nagindex.engines import ray as R
N = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
L, K, W = 28, 20, 6144
rng = np.random.default_rng(0)
feats = rng.integers(0, W, size=(N, L * K), dtype=np.uint16)
docs = pa.table({"docid": [f"d{i:09d}" for i in range(N)], "token_num": pa.array(rng.integers(50, 2000, N), pa.int64())})
spec = FeatureSpec(backbone="synthetic", backbone_hash="0"*16, num_layers=L, top_k=K, neuron_types=("fwd_up",), layer_widths={"fwd_up": W})
path = Path("/tmp/nag-bench-scanidx"); shutil.rmtree(path, ignore_errors=True)
t = time.perf_counter(); Index.create(path, spec).append(documents=docs, feature_arrays={"fwd_up": feats}, progress=False)
print(f"append: {N} docs in {time.perf_counter()-t:.1f}s")
index = Index.open(path)
profiles = [scoring.build_profile(feats[rng.choice(N, 500)], num_layers=L, top_k=K, width=W) for _ in range(6)]
T = int(index.token_num().sum())
for m in (1, 6):
    t = time.perf_counter(); S.scan_scores(index, profiles[:m], "fwd_up"); loc = time.perf_counter() - t
    print(f"local scan, {m} target(s): {loc:.2f}s = {N/loc:,.0f} docs/s")
R.connect(num_cpus=2)
R.scan_candidates(index, profiles[:1], "fwd_up", budgets=[selection.token_budget(T, 0.2)])  # warm workers
for m in (1, 6):
    t = time.perf_counter()
    c = R.scan_candidates(index, profiles[:m], "fwd_up", budgets=[selection.token_budget(T, 0.2 / m)] * m)
    el = time.perf_counter() - t
    print(f"ray scan (2 CPUs, read_lance), {m} target(s), fraction 0.2: {el:.2f}s = {N/el:,.0f} docs/s; candidates/target {np.mean([len(x.rows) for x in c]):,.0f}")
    t = time.perf_counter()
    c = R.scan_candidates(index, profiles[:m], "fwd_up", tops=[1000] * m)
    el = time.perf_counter() - t
    print(f"ray scan, {m} target(s), top 1000: {el:.2f}s; candidates/target {np.mean([len(x.rows) for x in c]):,.0f}")
