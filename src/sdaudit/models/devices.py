"""Devices and dtypes: which device to run on, in which precision, and placing a component there."""

from __future__ import annotations

import torch

from ..errors import UsageError
from ..validation import did_you_mean


def available_devices() -> list[str]:
    """The device names this machine can run on: auto, cpu, then cuda, cuda:0, ... and mps when present."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' picks CUDA when available, else the CPU; any other name must be a device of this machine.

    Checked here, before a model is loaded, because torch only fails at the first ``.to(device)`` (an
    AssertionError "Torch not compiled with CUDA enabled", or "invalid device ordinal" mid-run).
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        resolved = None
    if resolved is not None and (resolved.type == "cpu" or str(resolved) in available_devices()):
        return resolved
    raise UsageError(f"device '{device}' is not available on this machine; available: "
                     f"{', '.join(available_devices())}")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto' is float16 on CUDA and float32 elsewhere (CPU half precision is slow and inexact)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}
    if dtype not in table:
        names = ("auto", "float16", "bfloat16", "float32")
        raise UsageError(f"unknown dtype '{dtype}'{did_you_mean(dtype, names)}; use one of {', '.join(names)}")
    return table[dtype]


def diffusers_dtype_kwarg(dtype: torch.dtype) -> dict:
    """diffusers renamed ``torch_dtype`` to ``dtype``; pass whichever this version knows."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else {"torch_dtype": dtype}


def place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move a component to ``device`` and ``dtype`` for inference (eval mode, no gradients)."""
    from diffusers.utils import logging as diffusers_logging

    module = module.to(device)
    if next(module.parameters()).dtype != dtype:
        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # silence a warning about fp32 modules that these models lack
        try:
            module = module.to(dtype)
        finally:
            diffusers_logging.set_verbosity(level)
    return module.eval().requires_grad_(False)
