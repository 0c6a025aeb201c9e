"""Benchmarks for the analyses (not part of the test suite): python tests/analyses/bench_analyses.py

1. group_similarity on a (100, 320, 64, 64) float32 array vs a brute-force n^4 computation
   (timed on a few images, extrapolated).
2. detector precision / recall on planted anomalies, by planted ratio, and false alarms on clean maps.
3. agreement of the closed-form probes with the published trained probe (5 epochs as published,
   and trained longer).
"""

import sys
import time

import numpy as np

from sdaudit.analyses import compare_labels, detect_anomalies, group_masks, group_similarity, position_probe
from sdaudit.analyses.synthetic import anomaly_features, positional_features


def brute_group_similarity(x):
    """Published approach: per image the full (n^2 x n^2) cosine tensor, then masked group means."""
    n, c, h, w = x.shape
    m = group_masks(h, w).reshape(3, -1)
    num = np.zeros((3, 3))
    for i in range(n):
        t = x[i].reshape(c, -1).T
        u = t / np.linalg.norm(t, axis=1, keepdims=True)
        sim = u @ u.T  # n^4 entries
        for a in range(3):
            for b in range(3):
                num[a, b] += sim[np.ix_(m[a], m[b])].sum() - (np.trace(sim[np.ix_(m[a], m[a])]) if a == b else 0)
    return num


def bench_groups():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 320, 64, 64), dtype=np.float32)
    t = time.perf_counter()
    group_similarity(x)
    fast = time.perf_counter() - t
    k = 3
    t = time.perf_counter()
    brute_group_similarity(x[:k])
    slow = (time.perf_counter() - t) / k * 100
    print(f"group_similarity (100, 320, 64, 64) float32: {fast:.2f} s; brute force n^4: "
          f"{slow / 100:.2f} s/image -> {slow:.0f} s for 100 images (extrapolated from {k}); speed-up {slow / fast:.0f}x")


def bench_detector():
    for r in (1.5, 2.0, 2.25, 2.5, 3.0, 4.0, (2.5, 5.0)):
        a = anomaly_features(500, 64, 32, ratio=r, seed=21)
        pr = compare_labels(detect_anomalies(a.features), a.anomalies)
        print(f"detector, planted ratio {r}: {len(a.anomalies)} anomalies, precision {pr['precision']:.3f} "
              f"recall {pr['recall']:.3f} (tp {pr['tp']} fp {pr['fp']} fn {pr['fn']})")
    for v in (0.3, 0.5, 0.7):
        c = anomaly_features(500, 64, 32, clean_fraction=1.0, norm_variation=v, seed=22)
        print(f"detector, 500 clean maps (norm variation +-{v}): {len(detect_anomalies(c.features).rows)} detections")


def bench_probe():
    res = (8, 16, 32)
    for n_img, c, n in ((100, 128, 16), (60, 320, 32)):
        for s in (0.0, 0.03, 0.06, 0.1, 0.2):
            x = positional_features(n_img, c, n, strength=s, seed=1).features
            row = {}
            for name, kw in (("lda", {}), ("ridge", {"method": "ridge"}), ("paper5", {"method": "paper", "threads": 1}),
                             ("paper30", {"method": "paper", "epochs": 30, "lr": 1e-2, "threads": 1})):
                t = time.perf_counter()
                r = position_probe(x, resolutions=res, **kw)
                row[name] = ([round(r.accuracy[k], 3) for k in res], round(time.perf_counter() - t, 2))
            d5 = max(abs(a - b) for a, b in zip(row["lda"][0], row["paper5"][0]))
            d30 = max(abs(a - b) for a, b in zip(row["lda"][0], row["paper30"][0]))
            dr = max(abs(a - b) for a, b in zip(row["lda"][0], row["ridge"][0]))
            print(f"probe N={n_img} C={c} n={n} s={s}: {row}  max|lda-paper5|={d5:.3f} "
                  f"max|lda-paper30|={d30:.3f} max|lda-ridge|={dr:.3f}", flush=True)


if __name__ == "__main__":
    which = sys.argv[1:] or ["groups", "detector", "probe"]
    for name in which:
        globals()[f"bench_{name}"]()
