"""LDA probe vs the published (trained) probe at a realistic scale, per layer.

    python benchmarks/bench_probe.py [--images 200] [--size 512] [--model tiny] [--out benchmarks/results]

Extracts the paper's 45 layers of ``--images`` pictures (the benchmarks' smooth random photos) into a
store under ``$SDAUDIT_BENCH_DIR`` (resumable), then fits on every layer: the closed-form LDA probe
(what the audit runs by default), the published probe on all tokens at once (``position_probe(method=
"paper")``: Adam, lr 1e-3, batch 512, 5 epochs, seed 42), and the streamed published probe the audit
runs with ``--probe paper`` (a bounded sample of training tokens, the published number of steps).
Prints a markdown table (accuracy per resolution, differences) and saves it with the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, image_folder, machine, quiet  # noqa: E402

RES = (8, 16, 32, 64)


def extract_store(model: str, n: int, size: int) -> Path:
    from sdaudit.extraction import extract

    base = Path(os.environ.get("SDAUDIT_BENCH_DIR", "/tmp/sdaudit-bench"))
    images = image_folder(base / f"probe-images-{size}", n, size)
    store = base / f"probe-{model.replace(':', '_')}-{n}-{size}.zarr"
    extract(model, str(images), store, layers="paper", size=size, batch_size=8, progress=False)
    return store


def probe_layer(store, layer: str) -> dict:
    from sdaudit.analyses import position_probe
    from sdaudit.analyses.probe_paper import PaperProbeAccumulator

    x = store.read(layer).astype(np.float32)
    out = {"layer": layer, "channels": int(x.shape[1]), "grid": int(x.shape[2])}
    t = time.perf_counter()
    lda = position_probe(x, resolutions=RES)
    out["lda_s"] = time.perf_counter() - t
    t = time.perf_counter()
    paper = position_probe(x, resolutions=RES, method="paper")
    out["paper_s"] = time.perf_counter() - t
    t = time.perf_counter()
    acc = PaperProbeAccumulator(len(x), resolutions=RES, layer=layer)
    for i in range(0, len(x), 16):
        acc.update(x[i:i + 16], image_indices=range(i, min(i + 16, len(x))))
    streamed = acc.result()
    out["streamed_s"] = time.perf_counter() - t
    for name, r in (("lda", lda), ("paper", paper), ("streamed", streamed)):
        out[name] = {s: r.accuracy[s] for s in RES}
        out[name + "_ci"] = {s: [r.intervals[s].low, r.intervals[s].high] for s in RES}
    out["chance"] = {s: lda.chance[s] for s in RES}
    out["kept_tokens"] = streamed.details["train_tokens_kept"]
    out["train_tokens"] = streamed.details["train_tokens_seen"]
    return out


def table(rows: list[dict]) -> str:
    head = ("| layer | C | n | LDA @8/16/32/64 | paper @8/16/32/64 | streamed paper @8/16/32/64 | "
            "max abs(LDA - paper) |\n|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        f = lambda d: " / ".join(f"{d[s]:.3f}" for s in RES)  # noqa: E731
        diff = max(abs(r["lda"][s] - r["paper"][s]) for s in RES)
        lines.append(f"| {r['layer']} | {r['channels']} | {r['grid']} | {f(r['lda'])} | {f(r['paper'])} | "
                     f"{f(r['streamed'])} | {diff:.3f} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> dict:
    out = {}
    for a, b in (("lda", "paper"), ("streamed", "paper")):
        d = np.array([[r[a][s] - r[b][s] for s in RES] for r in rows])
        out[f"{a}-{b}"] = {"median_abs": {s: float(np.median(np.abs(d[:, k]))) for k, s in enumerate(RES)},
                           "max_abs": {s: float(np.abs(d[:, k]).max()) for k, s in enumerate(RES)},
                           "mean": {s: float(d[:, k].mean()) for k, s in enumerate(RES)}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    quiet()
    from sdaudit.store import open_store

    t = time.perf_counter()
    store = open_store(extract_store(args.model, args.images, args.size))
    extract_s = time.perf_counter() - t
    rows = [probe_layer(store, layer) for layer in store.layers]
    result = {"machine": machine(), "model": args.model, "images": args.images, "size": args.size,
              "extract_s": extract_s, "layers": rows, "summary": summary(rows)}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"probe-{stamp}.json").write_text(json.dumps(result, indent=1))
    (Path(args.out) / f"probe-{stamp}.md").write_text(table(rows) + "\n")
    print(table(rows))
    print(json.dumps(result["summary"], indent=1))
    emit({"summary": result["summary"], "file": f"probe-{stamp}.json"})


if __name__ == "__main__":
    main()
