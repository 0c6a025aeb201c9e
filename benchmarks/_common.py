"""Shared helpers of the benchmarks: machine description, test images, peak memory, subprocess workers."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT_TAG = "BENCH_RESULT "

PUBLISHED_PASSES = 1 + 2 * 45 + 1  # probe pass; a full and a cropped pass per layer (crop experiment); anomalies


def machine() -> dict:
    """Date, CPU count, CPU model and memory of this machine (``nproc``, ``lscpu``)."""
    info = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "nproc": os.cpu_count(),
            "python": platform.python_version()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        info["cpu"] = fields.get("Model name", "").strip()
        info["threads_per_core"] = fields.get("Thread(s) per core", "").strip()
        info["lscpu_head"] = "\n".join(lscpu.splitlines()[:10])
    except (OSError, subprocess.SubprocessError):
        info["cpu"] = platform.processor()
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _proc_status_mib(field: str) -> float | None:
    """A kB field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in MiB; None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM) in MiB."""
    peak = _proc_status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux ``clear_refs``); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mib() -> float:
    """This process's current resident set size (VmRSS) in MiB."""
    rss = _proc_status_mib("VmRSS")
    return float("nan") if rss is None else rss


def photo(seed: int, size: int):
    """A smooth random RGB picture (as in the tests: not white noise, so the VAE sees structure)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 8 + 1, size // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.BILINEAR)


def image_folder(path: Path, n: int, size: int) -> Path:
    """``n`` PNG pictures of ``size`` px in ``path`` (reused when already there)."""
    path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        file = path / f"img{i:05d}.png"
        if not file.exists():
            photo(1000 + i, size).save(file)
    return path


def emit(result: dict) -> None:
    """Print a worker's result as one tagged JSON line (read back by :func:`run_worker`)."""
    print(RESULT_TAG + json.dumps(result), flush=True)


def run_worker(script: str, *args: str, timeout: float = 3600, env: dict | None = None) -> dict:
    """Run ``benchmarks/<script>`` in a fresh Python process and return its tagged JSON result."""
    cmd = [sys.executable, str(HERE / script), *map(str, args)]
    # import sdaudit from this checkout, whatever the environment's (editable) install points at
    src = str(HERE.parent / "src")
    path = os.pathsep.join([src] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path,
                **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def stats(times: list[float]) -> dict:
    return {"best": min(times), "median": statistics.median(times), "all": [round(t, 4) for t in times]}


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


def quiet() -> None:
    """Silence library chatter (progress bars, warnings) in workers."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    try:
        import diffusers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
    except ImportError:
        pass
