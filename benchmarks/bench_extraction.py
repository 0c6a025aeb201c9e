"""Worker: extraction throughput of sdaudit and of sdhelper 1.0.0 on one saved pipeline, same images, same layers.

    python benchmarks/bench_extraction.py --pipeline DIR --size 256 --n 8 --batch 4 --tools sdaudit,sdhelper
    python benchmarks/bench_extraction.py --pipeline DIR --whole-process --size 256 --n 32 --rounds 5

``--whole-process`` (the issue's workload) times whole processes instead, paired and alternated:
``sdaudit extract`` (load, shapes, extraction, store writes) against a process that loads sdhelper,
extracts the same images into RAM with ``img2repr`` and saves one file. It reports each round's
ratio (sdaudit's time over the helper's) and their median; the target is <= 1.1.

Both tools are loaded in this process and timed in alternation (round 1: sdaudit, sdhelper; round 2: ...),
so that the load of a shared machine hits both alike; the best and the median round are reported.
With one tool only, the peak resident memory (VmHWM) of the process is that tool's.
Prints one tagged JSON line (see _common.emit).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, emit, peak_rss_mib, photo, quiet, rss_mib, stats  # noqa: E402


HELPER = """
import sys, torch, sdhelper
from PIL import Image
from pathlib import Path
from sdaudit.models import family_for_config
pipe, folder, size, batch, out = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
sd = sdhelper.SD(pipe, device="cpu", local_files_only=True, disable_progress_bar=True)
layers = family_for_config(sd.pipeline.unet.config).paper_layers()
images = [Image.open(p).convert("RGB").resize((size, size)) for p in sorted(folder.glob("*.png"))]
torch.save(sd.img2repr(images, layers, step=50, seed=42, batch_size=batch), out)
"""


def whole_process(args) -> dict:
    """Paired whole-process runs of ``sdaudit extract`` and of the helper, alternating, in fresh processes."""
    import subprocess
    import tempfile

    from _common import image_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder = image_folder(Path(tmp) / "images", args.n, args.size)
        commands = {
            "sdaudit": [sys.executable, "-m", "sdaudit", "extract", "--model", args.pipeline, "--images", str(folder),
                        "--out", str(Path(tmp) / "store"), "--size", str(args.size), "--protocol", args.protocol,
                        "--batch-size", str(args.batch), "--device", "cpu"],
            "sdhelper": [sys.executable, "-c", HELPER, args.pipeline, str(folder), str(args.size), str(args.batch),
                         str(Path(tmp) / "helper.pt")],
        }
        times: dict[str, list[float]] = {tool: [] for tool in commands}
        for _ in range(args.rounds):
            for tool, command in commands.items():
                subprocess.run(["rm", "-rf", str(Path(tmp) / "store"), str(Path(tmp) / "helper.pt")], check=True)
                with Timer() as t:
                    subprocess.run(command, check=True, capture_output=True)
                times[tool].append(t.seconds)
    ratios = sorted(a / h for a, h in zip(times["sdaudit"], times["sdhelper"]))
    return {"pipeline": args.pipeline, "size": args.size, "n": args.n, "batch": args.batch, "mode": "whole-process",
            "tools": {tool: {"seconds": stats(ts)} for tool, ts in times.items()},
            "paired_ratios_sdaudit_over_helper": [round(r, 3) for r in ratios],
            "median_ratio": round(ratios[len(ratios) // 2], 3), "target": 1.1}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", required=True, help="a saved diffusers pipeline folder")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tools", default="sdaudit,sdhelper")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--protocol", default="paper", help="sdaudit protocol; 'paper' computes exactly what sdhelper does")
    ap.add_argument("--check", action="store_true", help="compare the two tools' outputs on the first batch")
    ap.add_argument("--whole-process", action="store_true", help="time whole processes (sdaudit extract vs helper)")
    args = ap.parse_args()
    if args.whole_process:
        emit(whole_process(args))
        return
    quiet()
    import torch

    from sdaudit.extraction import ExtractionSettings, Extractor
    from sdaudit.models import load_model

    images = [photo(i, args.size) for i in range(args.n)]
    tools = args.tools.split(",")
    out = {"pipeline": args.pipeline, "size": args.size, "n": args.n, "batch": args.batch, "tools": {},
           "rss_start_mib": rss_mib(), "threads": torch.get_num_threads()}
    runners = {}
    layers = None
    for tool in tools:
        with Timer() as t:
            if tool == "sdaudit":
                model = load_model(args.pipeline, device="cpu")
                layers = model.family.paper_layers()
                ex = Extractor(model, layers, ExtractionSettings(protocol=args.protocol, size=args.size, seed=42,
                                                                 timestep=50))

                def run_sdaudit(ex=ex):
                    reps = []
                    for s in range(0, len(images), args.batch):
                        reps.append(ex.run(images[s:s + args.batch], list(range(s, min(s + args.batch, len(images))))))
                    return reps

                runners[tool] = run_sdaudit
            elif tool == "sdhelper":
                import sdhelper

                sd = sdhelper.SD(args.pipeline, device="cpu", local_files_only=True, disable_progress_bar=True)
                if layers is None:
                    from sdaudit.models import family_for_config

                    layers = family_for_config(sd.pipeline.unet.config).paper_layers()

                def run_sdhelper(sd=sd):
                    return sd.img2repr(images, layers, step=50, seed=42, batch_size=args.batch)

                runners[tool] = run_sdhelper
            else:
                raise SystemExit(f"unknown tool {tool}")
        out["tools"][tool] = {"load_s": round(t.seconds, 2), "rss_after_load_mib": round(rss_mib(), 1)}
    out["layers"] = len(layers)
    if args.check and {"sdaudit", "sdhelper"} <= set(tools):
        ex, sd = runners["sdaudit"].__defaults__[0], runners["sdhelper"].__defaults__[0]
        a = ex.run(images[:args.batch], list(range(args.batch)))
        b = sd.img2repr(images[:args.batch], layers, step=50, seed=42, batch_size=args.batch)
        worst = 0.0
        for name in layers:
            hb = torch.stack([r[name][0] for r in b]).float()
            worst = max(worst, (a[name] - hb).abs().max().item() / max(hb.abs().max().item(), 1e-12))
        out["max_rel_diff_vs_sdhelper"] = worst
        del a, b
    for tool in tools:  # warm-up (allocator, oneDNN primitives)
        runners[tool]()
    times = {tool: [] for tool in tools}
    for _ in range(args.rounds):
        for tool in tools:
            with Timer() as t:
                result = runners[tool]()
            times[tool].append(t.seconds)
            del result
    for tool in tools:
        st = stats(times[tool])
        out["tools"][tool].update(seconds=st, images_per_s_best=args.n / st["best"],
                                  images_per_s_median=args.n / st["median"])
    if {"sdaudit", "sdhelper"} <= set(tools):  # each round's sdhelper time over sdaudit's: a paired comparison
        out["paired_ratios"] = [round(h / a, 4) for a, h in zip(times["sdaudit"], times["sdhelper"])]
    out["peak_rss_mib"] = round(peak_rss_mib(), 1)
    emit(out)


if __name__ == "__main__":
    main()
