"""Worker: sdaudit's analyses against the published brute-force / trained computations.

    python benchmarks/bench_analyses.py groups      # group_similarity on (100, 320, 64, 64) vs the n^4 tensors
    python benchmarks/bench_analyses.py probe       # closed-form LDA probe vs the published trained probe
    python benchmarks/bench_analyses.py published --model arch:sd15 --size 256
                                                    # the published analysis cost per image, all 45 layers

Prints one tagged JSON line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, quiet, stats  # noqa: E402


def brute_force_groups(x: np.ndarray, pool: dict | None = None) -> np.ndarray:
    """The published approach: per image the full (n^2 x n^2) cosine-similarity tensor, as sdhelper's
    ``SDRepresentation.cosine_similarity`` makes it (unit tokens, one matrix product, float32), then
    the mean of each group's block of it over ordered pairs of distinct tokens (3 x 3 group pairs).
    Returns the 3 x 3 matrix of summed similarities (pooled over images)."""
    import torch

    from sdaudit.analyses import group_masks

    n, c, h, w = x.shape
    masks = torch.from_numpy(group_masks(h, w).reshape(3, -1))
    num = torch.zeros(3, 3, dtype=torch.float64)
    for i in range(n):
        a = torch.from_numpy(x[i]).float()
        a = a / a.norm(dim=0, keepdim=True)
        sim = (a.flatten(1).T @ a.flatten(1)).reshape(h, w, h, w)  # the n^4 tensor
        flat = sim.reshape(h * w, h * w)
        for ga in range(3):
            rows = flat[masks[ga]]
            for gb in range(3):
                block = rows[:, masks[gb]]
                total = block.sum(dtype=torch.float64)
                if ga == gb:
                    total -= torch.diagonal(block).sum(dtype=torch.float64)
                num[ga, gb] += total
    return num.numpy()


def bench_groups(args) -> dict:
    from sdaudit.analyses import group_similarity

    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 320, 64, 64), dtype=np.float32)
    fast = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        result = group_similarity(x)
        fast.append(time.perf_counter() - t)
    k = args.brute_images
    slow = []
    for _ in range(max(1, args.repeats - 1)):
        t = time.perf_counter()
        num = brute_force_groups(x[:k])
        slow.append((time.perf_counter() - t) / k)
    # agreement on the same k images
    part = group_similarity(x[:k])
    counts = part.pair_counts.astype(float)
    agree = float(np.nanmax(np.abs(num / counts - part.matrix)))
    fs, ss = stats(fast), stats(slow)
    return {"shape": [100, 320, 64, 64], "fast_s": fs, "brute_s_per_image": ss, "brute_images_timed": k,
            "brute_s_100_extrapolated": ss["best"] * 100, "speedup_best": ss["best"] * 100 / fs["best"],
            "speedup_median": ss["median"] * 100 / fs["median"], "max_abs_diff": agree,
            "within_other": float(result.within["other"])}


def bench_probe(args) -> dict:
    from sdaudit.analyses import position_probe
    from sdaudit.analyses.synthetic import positional_features

    out = []
    res = (8, 16, 32)
    for n_img, c, g, s in ((100, 320, 32, 0.06), (60, 640, 16, 0.1)):
        x = positional_features(n_img, c, g, strength=s, seed=1).features
        row = {"shape": [n_img, c, g, g], "strength": s}
        for name, kw in (("lda", {}), ("paper", {"method": "paper", "threads": None})):
            t = time.perf_counter()
            r = position_probe(x, resolutions=res, **kw)
            row[name] = {"seconds": time.perf_counter() - t, "accuracy": {k: round(r.accuracy[k], 4) for k in res}}
        row["speedup"] = row["paper"]["seconds"] / row["lda"]["seconds"]
        out.append(row)
    return {"rows": out}


def bench_published(args) -> dict:
    """Per-image cost of the published analyses over the 45 layers of ``--model`` at ``--size``:
    the border experiment's two n^4 tensors per layer (full and cropped image) and the trained probe
    (5 epochs, Adam, batch 512) per layer, on random features of each layer's shape."""
    import torch

    from sdaudit.analyses import position_probe
    from sdaudit.models import family_for_config, load_denoiser_config, parse_model_spec

    family = family_for_config(load_denoiser_config(parse_model_spec(args.model)))
    infos = [i for i in family.layer_infos(args.size) if i.name in set(family.paper_layers())]
    shapes: dict[tuple[int, int], int] = {}
    for info in infos:
        shapes[(info.channels, info.height)] = shapes.get((info.channels, info.height), 0) + 1
    rng = np.random.default_rng(0)
    per_shape = []
    border_total = probe_total = 0.0
    for (c, g), count in sorted(shapes.items()):
        x = rng.standard_normal((args.probe_images, c, g, g), dtype=np.float32)
        t = time.perf_counter()
        brute_force_groups(x[:2])
        border = (time.perf_counter() - t) / 2 * 2  # two tensors per image: full and cropped
        t = time.perf_counter()
        position_probe(torch.from_numpy(x), method="paper") if g > 1 else None
        probe = (time.perf_counter() - t) / args.probe_images
        per_shape.append({"channels": c, "grid": g, "layers": count, "border_s_per_image": border,
                          "probe_s_per_image": probe})
        border_total += count * border
        probe_total += count * probe
    return {"model": args.model, "size": args.size, "layers": len(infos), "shapes": per_shape,
            "border_s_per_image": border_total, "probe_s_per_image": probe_total,
            "analysis_s_per_image": border_total + probe_total, "probe_images": args.probe_images}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("which", choices=["groups", "probe", "published"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--brute-images", type=int, default=3)
    ap.add_argument("--model", default="arch:sd15")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--probe-images", type=int, default=10)
    args = ap.parse_args()
    quiet()
    emit({"which": args.which, **globals()[f"bench_{args.which}"](args)})


if __name__ == "__main__":
    main()
