"""score_features throughput on a synthetic 1M x 560 uint16 matrix (L=28, K=20, width 6144)."""
import os, sys, time
import numpy as np
from nagindex.ranking import scoring
L, K, W, N = 28, 20, 6144, 1_000_000
rng = np.random.default_rng(0)
feats = rng.integers(0, W, size=(N, L * K), dtype=np.uint16)
target = rng.integers(0, W, size=(1000, L * K), dtype=np.uint16)
prof = scoring.build_profile(target, num_layers=L, top_k=K, width=W)
kernel = sys.argv[1] if len(sys.argv) > 1 else None
scoring.score_features(feats[:1000], prof, kernel=kernel)  # compile / warm
best = 1e9
for _ in range(3):
    t = time.perf_counter(); s = scoring.score_features(feats, prof, kernel=kernel); best = min(best, time.perf_counter() - t)
print(f"kernel={kernel or scoring._kernel_name()} threads={os.environ.get('NUMBA_NUM_THREADS','all')} rows={N} seconds={best:.3f} docs_per_s={N/best:,.0f}")
