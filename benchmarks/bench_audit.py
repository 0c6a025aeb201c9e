"""Worker: one full sdaudit audit in this process: U-Net passes per image, wall time, peak memory.

    python benchmarks/bench_audit.py --model tiny --images DIR --size 128 [--analyses position,borders,anomalies]

The model is loaded first (not timed); the peak resident memory (VmHWM) is that of the whole
process (model included), the RSS after loading is reported beside it. Prints one tagged JSON line.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, emit, peak_rss_mib, quiet, reset_peak_rss, rss_mib  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="model spec or saved pipeline folder")
    ap.add_argument("--images", required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--layers", default="paper")
    ap.add_argument("--analyses", default="position,borders,anomalies,maps")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--sdhelper", help="a saved pipeline folder: also time one sdhelper 1.0.0 pass over the same "
                    "images and layers (the published pipeline's unit of cost), alternating with the audit")
    args = ap.parse_args()
    quiet()
    import torch

    from sdaudit.audit import AuditSettings, audit
    from sdaudit.models import load_model

    with Timer() as load:
        model = load_model(args.model, device=args.device)
    rss_loaded = rss_mib()
    settings = AuditSettings(layers=args.layers, size=args.size, batch_size=args.batch,
                             analyses=[a for a in args.analyses.split(",") if a])
    helper = None
    if args.sdhelper:
        import sdhelper

        from sdaudit.extraction import prepare_for_model
        from sdaudit.images import iter_images
        from sdaudit.models import family_for_config

        sd = sdhelper.SD(args.sdhelper, device=args.device, local_files_only=True, disable_progress_bar=True)
        layers = family_for_config(sd.pipeline.unet.config).paper_layers()
        helper_images = [prepare_for_model(r.image, args.size) for r in iter_images(args.images)]

        def helper():
            return sd.img2repr(helper_images, layers, step=50, seed=42, batch_size=args.batch)

    times, helper_times, working, results = [], [], [], None
    for _ in range(args.rounds):
        if helper is not None:
            with Timer() as h:
                reps = helper()
            del reps
            helper_times.append(h.seconds)
        out = Path(tempfile.mkdtemp(prefix="sdaudit-bench-"))
        before = rss_mib()
        reset = reset_peak_rss()
        try:
            with Timer() as run:
                results = audit(model, args.images, out, settings, report=False, progress=False,
                                checkpoint_seconds=1e9, shard=None)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        times.append(run.seconds)
        if reset:  # the audit's own working memory, whatever else (sdhelper) this process holds
            working.append(peak_rss_mib() - before)
    n = len(results["images"])
    row = {"model": args.model, "size": args.size, "n": n, "layers": len(results["layers"]),
           "analyses": settings.analyses, "batch": args.batch, "threads": torch.get_num_threads(),
           "load_s": round(load.seconds, 2), "seconds": min(times), "seconds_all": [round(t, 2) for t in times],
           "seconds_per_image": min(times) / n, "seconds_per_image_median": statistics.median(times) / n,
           "unet_passes_per_image": results["run"]["unet_passes_per_image"], "passes": results["run"]["passes"],
           "anomalies": results.get("anomalies", {}).get("count"),
           "rss_after_load_mib": round(rss_loaded, 1), "peak_rss_mib": round(peak_rss_mib(), 1)}
    if working:  # peak of sdaudit alone: its model plus the audit's working memory
        row["audit_working_mib"] = round(max(working), 1)
        row["peak_rss_mib"] = round(rss_loaded + max(working), 1)
    if helper_times:
        row.update(sdhelper_pass_seconds_all=[round(t, 2) for t in helper_times],
                   sdhelper_s_per_image_pass=min(helper_times) / n,
                   sdhelper_s_per_image_pass_median=statistics.median(helper_times) / n)
    emit(row)


if __name__ == "__main__":
    main()
