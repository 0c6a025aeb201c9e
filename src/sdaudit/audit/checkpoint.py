"""Checkpoints of a run of the passes: the audit state, saved atomically, restored only when it matches.

A checkpoint is one ``.npz`` file holding :meth:`AuditState.state_dict` (every accumulator's state,
the passes' progress, the failed layers) and, in ``__meta__``, the checkpoint format and the run's
fingerprint (:func:`fingerprint`): a hash of the model, the settings that change the numbers and the images.
It is written to a temporary file and renamed, so that a kill never leaves a half-written checkpoint.
A checkpoint of other settings or images is ignored (the run starts afresh and overwrites it); one of
an older checkpoint format is ignored too, with a warning that the audit starts again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# 2: the fingerprint hashes the settings tree (AuditSettings.to_dict()) and __meta__ holds "format".
# 3: the fingerprint also covers the compute dtype and device and a full pass read from a store; it leaves
#    out the settings that cannot change the numbers (numeric_settings).
CHECKPOINT_FORMAT = 3


def fingerprint(model, settings, items: Sequence, *, from_store: bool | str = False) -> str:
    """What a run's numbers depend on: the model (its identity, compute dtype and device type), the settings
    that change the numbers (:func:`numeric_settings`), whether the full pass was read from a store and in which
    storage dtype (``from_store``: False, or the store's "float16" / "float32", whose rounding differs) or
    computed, and the images, in order."""
    key = {"model": model.identity(), "dtype": str(model.dtype), "device": model.device.type,
           "settings": numeric_settings(settings), "full_pass_from_store": from_store or False}
    h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode())
    for item in items:
        h.update(item.sha256.encode())
    return h.hexdigest()


def store_key(full_source) -> bool | str:
    """What the fingerprint records of a run's full-pass source: False (computed), else the store's storage dtype
    (:class:`~sdaudit.audit.sources.StoreSource`; True for another reader that names none)."""
    if full_source is None:
        return False
    return getattr(full_source, "storage_dtype", None) or True


def audit_fingerprint(model, settings, items: Sequence, *, from_store: bool | str, keep_store: bool) -> str:
    """What a finished audit's outputs depend on: its runs' :func:`fingerprint`, every setting (``n_show`` too:
    it changes the maps) and whether the representations were kept."""
    key = {"run": fingerprint(model, settings, items, from_store=from_store), "settings": settings.to_dict(),
           "keep_store": bool(keep_store)}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def numeric_settings(settings) -> dict:
    """:meth:`AuditSettings.to_dict` less what cannot change the checkpointed numbers: ``n_show`` (the maps are
    drawn after the passes), ``batch_size`` under protocol 'clean' (each image's noise is seeded by its index),
    ``probe_max_tokens`` unless the probe is the published one (it bounds only that probe's sample), ``views``
    unless the correspondence probe runs, ``mitigations`` when there are none; the keypoint pairs count by their
    contents (:func:`pairs_digest`)."""
    data = settings.to_dict()
    data.pop("n_show", None)
    if "correspondence" not in data.get("analyses", ()):
        data.pop("views", None)  # so that the checkpoints of audits without the probe keep their fingerprint
    if data.get("keypoints") is None:
        data.pop("keypoints", None)
    else:  # the pairs' contents, not their path: an edited or added pair file must not resume old counts
        from ..keypoint_pairs import load_keypoint_pairs, pairs_digest

        data["keypoints"] = pairs_digest(load_keypoint_pairs(data["keypoints"]))
    if not data.get("mitigations"):
        data.pop("mitigations", None)
    if data.get("protocol") != "paper":
        data.pop("batch_size", None)
    if data.get("probe_method") != "paper":
        data.pop("probe_max_tokens", None)
    return data


class Checkpointer:
    """Saves and restores one run's :class:`~sdaudit.audit.state.AuditState` at ``path``.

    ``interval_s``: :meth:`due` says when that long has passed since the last save (0: after every batch).
    """

    def __init__(self, path: Path, fingerprint: str, interval_s: float = 120.0):
        self.path, self.fingerprint, self.interval_s = Path(path), fingerprint, float(interval_s)
        self.last_save = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last_save > self.interval_s

    def save(self, state) -> None:
        """Write ``state`` atomically (temporary file, then rename)."""
        arrays = state.state_dict()
        meta = json.loads(str(arrays["__meta__"]))
        arrays["__meta__"] = np.array(json.dumps({"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint,
                                                  **meta}))
        tmp = self.path.with_name(self.path.name + ".partial")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.last_save = time.monotonic()

    def load(self, state) -> bool:
        """Restore ``state`` from a checkpoint of this format and fingerprint; False (state untouched) if
        there is none, or it belongs to other settings or images, or to an older format (with a warning)."""
        if not self.path.exists():
            return False
        with np.load(self.path, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            if meta.get("format", 1) != CHECKPOINT_FORMAT:
                warnings.warn(f"checkpoint '{self.path}' was written by checkpoint format {meta.get('format', 1)}; "
                              f"this sdaudit writes format {CHECKPOINT_FORMAT}: it is ignored and the run starts "
                              "again from the beginning", RuntimeWarning, stacklevel=2)
                return False
            if meta.get("fingerprint") != self.fingerprint:
                return False
            arrays = {key: data[key] for key in data.files}
        state.load_state_dict(arrays)
        return True
