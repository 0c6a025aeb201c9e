"""JSON-native conversion shared by results, intervals and accumulator settings (no other analyses import)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ._arrays import is_torch


def to_jsonable(obj: Any) -> Any:
    """Recursively convert to JSON-native types; non-finite floats become None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return obj.to_dict() if hasattr(obj, "to_dict") else to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if is_torch(obj):
        return to_jsonable(obj.detach().cpu().numpy())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)
