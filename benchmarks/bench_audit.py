"""Worker: one full sdaudit audit in this process: U-Net passes per image, wall time, peak memory.

    python benchmarks/bench_audit.py --model tiny --images DIR --size 128 [--analyses position,borders,anomalies]

The model is loaded first (not timed); the peak resident memory (VmHWM) is that of the whole
process (model included), the RSS after loading is reported beside it. Prints one tagged JSON line.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, emit, peak_rss_mib, quiet, rss_mib  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="model spec or saved pipeline folder")
    ap.add_argument("--images", required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--layers", default="paper")
    ap.add_argument("--analyses", default="position,borders,anomalies,maps")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--device", default="cpu")
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
    out = Path(tempfile.mkdtemp(prefix="sdaudit-bench-"))
    try:
        with Timer() as run:
            results = audit(model, args.images, out, settings, report=False, progress=False, checkpoint_seconds=1e9,
                            shard=None)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    n = len(results["images"])
    emit({"model": args.model, "size": args.size, "n": n, "layers": len(results["layers"]),
          "analyses": settings.analyses, "batch": args.batch, "threads": torch.get_num_threads(),
          "load_s": round(load.seconds, 2), "seconds": run.seconds, "seconds_per_image": run.seconds / n,
          "unet_passes_per_image": results["run"]["unet_passes_per_image"], "passes": results["run"]["passes"],
          "anomalies": results.get("anomalies", {}).get("count"),
          "rss_after_load_mib": round(rss_loaded, 1), "peak_rss_mib": round(peak_rss_mib(), 1)})


if __name__ == "__main__":
    main()
