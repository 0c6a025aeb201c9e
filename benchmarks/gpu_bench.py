"""GPU benchmark (run by benchmarks/gpu.sh): images/s of extraction and of the full audit on one GPU, the
achieved model FLOP/s against the card's peak, and sdhelper 1.0.0's images/s on the same card.

Any model spec works; the default list is the architecture-only models (random weights cost the same compute as
real ones) this sdaudit knows among ``arch:sd15``, ``arch:sd21``, ``arch:sdxl`` and ``arch:sd3``, each at its
own size (512 px for SD-1/2, 1024 px for SDXL and SD3) unless ``--size`` is given, in every dtype of
``--dtypes`` (float16 and bfloat16), PyTorch SDPA attention. Layers, noising and the denoiser come from the
model's family (``model.denoiser``), so U-Nets and transformers are measured alike. Each step is time-boxed by
``--budget-s``; what did not fit is listed as skipped. Prints a table and one tagged JSON line; with ``--out DIR``
also writes gpu.json.

    python benchmarks/gpu_bench.py [--models arch:sdxl] [--size 1024] [--dtypes float16,bfloat16] [--budget-s 270]
    python benchmarks/gpu_bench.py --smoke     # on the CPU: tiny models, 64 px, 1 image per pass (checks the script)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PUBLISHED_PASSES, emit, image_folder, machine, photo, quiet  # noqa: E402

# dense (no sparsity) float16/bfloat16 tensor-core peaks, TFLOP/s
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "GH200": 989.4, "A100": 312.0,
               "L40S": 362.0, "L4": 121.0, "A10": 125.0, "4090": 165.2, "V100": 125.0}


def peak_tflops(name: str) -> float | None:
    if os.environ.get("PEAK_TFLOPS"):
        return float(os.environ["PEAK_TFLOPS"])
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_TFLOPS[key]
    return None


def count_flops(extractor, size: int) -> dict:
    """FLOPs of one image's denoiser pass and VAE encode (FlopCounterMode over the extractor's own pass, so any
    family is counted alike; attention through the math backend so that its matrix products are counted whatever
    kernel runs it for real). The prompt is encoded once per model (cached), so no text encoder is counted."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from sdaudit.extraction import prepare_for_model
    from sdaudit.extraction.protocols import pixels_to_tensor

    model, image = extractor.model, photo(0, size)
    pixels = pixels_to_tensor([prepare_for_model(image, size)], extractor.settings.protocol)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as fc:
            model.family.noised_inputs(model, pixels, [0], extractor.settings)
        vae_flops = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            extractor.run([image], [0])
        total = fc.get_total_flops()
    return {"denoiser_gflop": (total - vae_flops) / 1e9, "vae_encode_gflop": vae_flops / 1e9}


def sync():
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.end - time.monotonic()

    def allow(self, step: str, need: float) -> bool:
        if self.left() >= need:
            return True
        self.skipped.append(f"{step} (needs ~{need:.0f} s, {max(self.left(), 0):.0f} s left)")
        return False


@dataclass
class Bench:
    """One (model, dtype) benchmark: the loaded model, its paper layers, the timed extractor and the images."""

    spec: str
    model: object
    layers: list[str]
    settings: object  # the timed ExtractionSettings
    extractor: object  # the timed Extractor
    batch: int
    images: list
    row: dict = field(default_factory=dict)

    def extract(self, extractor=None, device_output: bool = False) -> None:
        """Every image through ``extractor`` (the timed one by default), ``batch`` at a time."""
        extractor, n = extractor or self.extractor, len(self.images)
        for s in range(0, n, self.batch):
            out = extractor.run(self.images[s:s + self.batch], list(range(s, min(s + self.batch, n))),
                                device_output=device_output)
            del out

    def rate(self, seconds: float) -> float:
        """Images per second for one pass over the images in ``seconds``."""
        return len(self.images) / seconds


def load_bench(spec: str, dtype: str, args) -> Bench:
    """Load the model and set up the timed extractor, the batch size, the images and the row's static fields."""
    from sdaudit.extraction import ExtractionSettings, Extractor
    from sdaudit.extraction.extractor import auto_batch_size
    from sdaudit.models import load_model
    from sdaudit.models.hooks import attention_processors

    t = time.perf_counter()
    model = load_model(spec, device=args.device, dtype=dtype)
    size = args.size or model.default_size
    row: dict = {"model": spec, "size": size, "family": model.family.name}
    row["load_s"] = round(time.perf_counter() - t, 1)
    row["dtype"] = str(model.dtype).replace("torch.", "")
    row["attention"] = attention_processors(model.denoiser)
    row["sdpa"] = bool(row["attention"]) and all(name.endswith("2_0") for name in row["attention"])
    layers = model.family.paper_layers()
    settings = ExtractionSettings(protocol=args.protocol, size=size)  # 'paper': the published computation
    clean = Extractor(model, layers, ExtractionSettings(size=size))
    row.update(count_flops(clean, size))
    batch = args.batch or min(args.max_batch, auto_batch_size(clean, fraction=0.6, max_batch=args.max_batch))
    n = max(args.min_images, 3 * batch)
    row.update(batch=batch, images=n)
    return Bench(spec, model, layers, settings, Extractor(model, layers, settings), batch,
                 [photo(i, size) for i in range(n)], row)


def time_extraction(bench: Bench) -> None:
    """Extraction images/s (CPU float32 outputs, and outputs left on the device), model FLOP/s and MFU."""
    import torch

    row, model = bench.row, bench.model
    bench.extract()  # warm-up: cuDNN autotuning, allocator, pinned host buffers
    flops_per_image = (row["denoiser_gflop"] + row["vae_encode_gflop"]) * 1e9
    peak = peak_tflops(torch.cuda.get_device_name(0)) if model.device.type == "cuda" else None  # fp16 = bf16 peak
    row["extract_img_s"] = bench.rate(timed(bench.extract))
    row["extract_gpu_resident_img_s"] = bench.rate(timed(lambda: bench.extract(device_output=True)))
    row["model_tflop_s"] = flops_per_image * row["extract_gpu_resident_img_s"] / 1e12
    row["mfu"] = row["model_tflop_s"] / peak if peak else None
    row["peak_tflop_s"] = peak
    if model.device.type == "cuda":
        row["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30


def time_audit(bench: Bench, dtype: str, work: Path) -> None:
    """The full audit (position, borders, anomalies) on the family's paper layers (45 U-Net layers for SD-1/2,
    the joint blocks of SD3 and FLUX), from image files as a user would run it."""
    from sdaudit.audit import AuditSettings, audit

    row, n, size = bench.row, len(bench.images), bench.row["size"]
    folder = image_folder(work / f"images{size}", n, size)
    out = work / f"audit-{bench.spec.replace(':', '-')}-{dtype}"
    settings = AuditSettings(layers="paper", size=size, batch_size=bench.batch,
                             analyses=["position", "borders", "anomalies"])
    sync()
    t = time.perf_counter()
    results = audit(bench.model, folder, out, settings, report=False, progress=False, checkpoint_seconds=1e9,
                    shard=None)
    sync()
    row["audit_img_s"] = n / (time.perf_counter() - t)
    row["audit_passes_per_image"] = results["run"]["unet_passes_per_image"]
    row["audit_pass_seconds"] = {p["name"]: p["seconds"] for p in results["run"]["passes"]}
    shutil.rmtree(out, ignore_errors=True)


def time_sdhelper(bench: Bench, args, work: Path) -> None:
    """sdhelper 1.0.0 on the same card, images, layers and batch, and its largest relative difference from
    sdaudit's output on one batch (the 'paper' protocol reproduces it)."""
    import sdhelper

    row, layers, images, batch = bench.row, bench.layers, bench.images, bench.batch
    pipe_dir = work / f"pipe-{bench.spec.replace(':', '-')}"
    if not pipe_dir.exists():
        bench.model.save_pretrained(pipe_dir)
    sd = sdhelper.SD(str(pipe_dir), device=args.device, local_files_only=True, disable_progress_bar=True)
    sd.img2repr(images[:batch], layers, step=50, seed=42, batch_size=batch)  # warm-up
    row["sdhelper_img_s"] = bench.rate(timed(lambda: sd.img2repr(images, layers, step=50, seed=42,
                                                                 batch_size=batch), repeats=1))
    row["speedup_vs_sdhelper"] = row["extract_img_s"] / row["sdhelper_img_s"]
    if row.get("audit_img_s"):  # the published pipeline's passes alone, its analyses not counted
        row["audit_speedup_vs_published"] = row["audit_img_s"] * PUBLISHED_PASSES / row["sdhelper_img_s"]
    ours = bench.extractor.run(images[:2], [0, 1])
    theirs = sd.img2repr(images[:2], layers, step=50, seed=42, batch_size=2)
    row["max_rel_diff_vs_sdhelper"] = max_rel_diff(ours, theirs, layers)


def max_rel_diff(ours: dict, theirs: list, layers: list[str]) -> float:
    """The largest over ``layers`` of max |ours - sdhelper's| / max |sdhelper's| (one batch of both)."""
    import torch

    worst = 0.0
    for name in layers:
        b = torch.stack([r[name][0] for r in theirs]).float().cpu()
        worst = max(worst, float((ours[name] - b).abs().max() / b.abs().max().clamp_min(1e-12)))
    return worst


def time_variants(bench: Bench, args, budget: Budget) -> None:
    """The channels-last and ``torch.compile`` variants of device-resident extraction, as the budget allows."""
    import torch

    from sdaudit.extraction import Extractor

    row, model = bench.row, bench.model
    if args.channels_last and budget.allow(f"{bench.spec} channels_last", 30):
        ex_cl = Extractor(model, bench.layers, bench.settings, channels_last=True)
        bench.extract(ex_cl, True)
        row["extract_gpu_resident_channels_last_img_s"] = bench.rate(timed(lambda: bench.extract(ex_cl, True)))
        model.denoiser.to(memory_format=torch.contiguous_format)
    if args.compile and budget.allow(f"{bench.spec} torch.compile", 150):
        ex_c = Extractor(model, bench.layers, bench.settings, compile=True)
        t = time.perf_counter()
        bench.extract(ex_c, True)
        row["compile_s"] = time.perf_counter() - t
        row["extract_gpu_resident_compiled_img_s"] = bench.rate(timed(lambda: bench.extract(ex_c, True)))


def bench_model(spec: str, dtype: str, args, budget: Budget, work: Path) -> dict:
    """One (model, dtype) row: extraction, the full audit, sdhelper and the variants, each as the budget allows."""
    import torch

    bench = load_bench(spec, dtype, args)
    row, n = bench.row, len(bench.images)
    time_extraction(bench)
    if budget.allow(f"{spec} audit", 20 + 6 * n / max(row["extract_img_s"], 1e-9)):
        time_audit(bench, dtype, work)
    if args.sdhelper and budget.allow(f"{spec} sdhelper", 60 + 3 * n / max(row["extract_img_s"], 1e-9)):
        try:
            time_sdhelper(bench, args, work)
        except Exception as error:  # noqa: BLE001 - reported, the rest goes on
            traceback.print_exc()
            row["sdhelper_error"] = f"{type(error).__name__}: {error}"
    time_variants(bench, args, budget)
    del bench
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def table(rows: list[dict]) -> str:
    cols = [("model", "model"), ("size", "px"), ("dtype", "dtype"), ("batch", "batch"),
            ("extract_img_s", "extract img/s (CPU fp32 out)"),
            ("extract_gpu_resident_img_s", "extract img/s (on GPU)"), ("model_tflop_s", "model TFLOP/s"),
            ("mfu", "of peak"), ("audit_img_s", "full audit img/s"), ("audit_passes_per_image", "passes/img"),
            ("sdhelper_img_s", "sdhelper img/s"), ("speedup_vs_sdhelper", "extract x sdhelper"),
            ("audit_speedup_vs_published", f"audit x published (>= {PUBLISHED_PASSES} sdhelper passes)")]
    out = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for key, _ in cols:
            v = r.get(key)
            cells.append("-" if v is None else f"{v:.1%}" if key == "mfu" else f"{v:.2f}" if isinstance(v, float)
                         else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


#: the default models: these architectures where this sdaudit knows them (arch:sd3 once the SD3 family is in)
DEFAULT_MODELS = ("arch:sd15", "arch:sd21", "arch:sdxl", "arch:sd3")
SMOKE_MODELS = "tiny,tiny-sdxl"


def default_models() -> str:
    """The :data:`DEFAULT_MODELS` that parse as model specs here."""
    from sdaudit.models import ModelSpecError, parse_model_spec

    known = []
    for spec in DEFAULT_MODELS:
        try:
            parse_model_spec(spec)
            known.append(spec)
        except ModelSpecError:
            pass
    return ",".join(known)


def parse_args(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=None, help=f"comma-separated model specs (default: those of {DEFAULT_MODELS} "
                    "this sdaudit knows)")
    ap.add_argument("--size", type=int, default=0, help="px; 0: each model's own size (1024 for SDXL and SD3)")
    ap.add_argument("--dtypes", default="float16,bfloat16", help="compute dtypes, each benchmarked")
    ap.add_argument("--protocol", default="paper", help="extraction protocol timed (paper: as sdhelper computes)")
    ap.add_argument("--batch", type=int, default=0, help="images per pass; 0: fill the GPU (auto_batch_size)")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--min-images", type=int, default=64)
    ap.add_argument("--budget-s", type=float, default=270.0)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compilation)")
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                    help="skip the channels-last variant")
    ap.add_argument("--no-sdhelper", dest="sdhelper", action="store_false")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--device", default="cuda", help="'cpu' only to check this script's logic without a GPU")
    ap.add_argument("--smoke", action="store_true",
                    help=f"check the script on the CPU: {SMOKE_MODELS} unless --models, 64 px, 1 image per pass, "
                    "float32, no sdhelper / channels-last / compile")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device, args.size, args.batch, args.min_images = "cpu", args.size or 64, 1, 2
        args.dtypes, args.sdhelper, args.channels_last, args.compile = "float32", False, False, False
        args.models = args.models or SMOKE_MODELS
    args.models = args.models or default_models()
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    quiet()
    import torch

    if args.device != "cpu" and not torch.cuda.is_available():
        raise SystemExit("gpu_bench.py needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    budget = Budget(args.budget_s)
    info = machine()
    cuda = args.device != "cpu"
    info["gpu"] = torch.cuda.get_device_name(0) if cuda else "none (--device cpu)"
    info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else 0
    print(f"{info['date']}  {info['gpu']} ({info['gpu_memory_gib']} GiB), {info['cpu']} x{info['nproc']}, "
          f"torch {info['torch']}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="sdaudit-gpu-"))
    rows = []
    try:
        for spec in args.models.split(","):
            for dtype in args.dtypes.split(","):
                if not budget.allow(f"{spec} {dtype} (all)", 45):
                    continue
                try:
                    row = bench_model(spec, dtype, args, budget, work)
                except Exception as error:  # noqa: BLE001
                    traceback.print_exc()
                    row = {"model": spec, "dtype": dtype, "error": f"{type(error).__name__}: {error}"}
                rows.append(row)
                print(json.dumps(row, default=str), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(rows))
    if budget.skipped:
        print("skipped (time budget): " + "; ".join(budget.skipped))
    result = {"machine": info, "rows": rows, "skipped": budget.skipped}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu.json").write_text(json.dumps(result, indent=1, default=str))
    emit(result)


if __name__ == "__main__":
    main()
