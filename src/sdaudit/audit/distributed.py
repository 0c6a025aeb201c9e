"""Multi-process audits: shard the images over processes (CPU cores or GPUs) and merge the accumulators.

Each process runs every pass of the plan on its share of the images and streams it through its own
accumulators; the shards' states are then merged (``torch.distributed``, on a gloo group: the states
are small numpy arrays, so no GPU collective is needed even when the passes run on GPUs). Merged
results equal a single-process run's up to float rounding (sums taken in another order).

The one ordering constraint is the position probe's: a test image can only be scored once the
training statistics of *all* training images are known. So the full pass runs in two steps: each
process streams its block of the training images (images ``0 .. n_train-1``, split in contiguous
blocks), the training statistics are merged and handed to every process (:meth:`Shard.sync_probe`),
then each process streams its block of the test images. The cropped passes run over all of a
process's images. At the end :meth:`Shard.reduce_state` merges every accumulator on rank 0 (a binary
tree of point-to-point transfers, so that no process ever holds more than two states); the training
statistics, which every process holds after the sync, count once.

Ways to start it:

* ``accelerate launch --multi_gpu --num_processes K -m sdaudit audit ...`` or ``torchrun --nproc-per-node K
  -m sdaudit audit ...`` (``accelerate launch --cpu`` starts a single process): the launcher sets
  ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; :func:`init_from_env` joins the
  group and puts each process on GPU ``LOCAL_RANK`` (when there are GPUs), and :func:`sdaudit.audit.audit`
  shards automatically.
* ``sdaudit audit --num-processes K ...`` or :func:`audit_multiprocess`: spawns K local processes
  (``torch.multiprocessing``, gloo over a free localhost TCP port), one per GPU when there are at
  least K GPUs, else on the CPU with ``cores / K`` threads each.

Only rank 0 writes results.json, the figures, the maps and the report; every rank returns the same
results dict. ``keep_store`` (one zarr store written by several processes) is not supported.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UsageError

_PROBE = "probe/"
_SYNCED = "probe-sync"


def _dist():
    import torch.distributed as dist

    return dist


def _env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env(timeout_s: float = 3600.0) -> "Shard | None":
    """Join the process group a launcher (accelerate, torchrun, :func:`audit_multiprocess`) describes in
    the environment, and select GPU ``LOCAL_RANK`` when there are GPUs; None when not launched so.

    Call it before loading the model, so that ``--device auto`` (or ``cuda``) loads it on this
    process's GPU. Calling it again returns the same shard.
    """
    dist = _dist()
    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if _env_world_size() <= 1:
            return None
        _select_local_gpu()
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
    elif dist.get_world_size() <= 1:
        return None
    else:
        _select_local_gpu()
    return Shard()


def _select_local_gpu() -> None:
    import torch

    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        local = int(os.environ["LOCAL_RANK"])
        if local < torch.cuda.device_count():
            torch.cuda.set_device(local)


class Shard:
    """This process's view of a multi-process audit: its rank, the group size, and the merge steps.

    Requires an initialised ``torch.distributed`` process group (see :func:`init_from_env`). State is
    exchanged on a gloo group (the default group when it is gloo, else a new one), as pickled numpy
    arrays.
    """

    def __init__(self, group=None):
        dist = _dist()
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised; use init_from_env() or audit_multiprocess()")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if group is None and dist.get_backend() != "gloo":
            group = dist.new_group(backend="gloo")
        self.group = group

    # ----- the split -----------------------------------------------------------------------------
    def split(self, items: Sequence, n_train: int) -> list[list]:
        """[this rank's block of the first ``n_train`` items, its block of the rest] (contiguous blocks)."""
        return [_block(list(items[:n_train]), self.rank, self.world_size),
                _block(list(items[n_train:]), self.rank, self.world_size)]

    # ----- collectives -----------------------------------------------------------------------------
    def all_gather(self, obj) -> list:
        out = [None] * self.world_size
        _dist().all_gather_object(out, obj, group=self.group)
        return out

    def broadcast(self, obj, src: int = 0):
        box = [obj if self.rank == src else None]
        _dist().broadcast_object_list(box, src=src, group=self.group)
        return box[0]

    def barrier(self) -> None:
        _dist().barrier(group=self.group)

    def check_same(self, value, what: str) -> None:
        """Raise on every rank unless all ranks hold the same ``value`` (e.g. the audit's fingerprint)."""
        values = self.all_gather(value)
        if any(v != values[0] for v in values):
            raise RuntimeError(f"the {self.world_size} processes disagree on {what}; every process must see the same "
                               "model, settings and images in the same order")

    def reduce(self, payload, combine):
        """Combine every rank's ``payload`` on rank 0 along a binary tree; rank 0 gets the result, others None."""
        dist = _dist()
        step = 1
        while step < self.world_size:
            if self.rank % (2 * step) == step:
                dist.send_object_list([payload], dst=self.rank - step, group=self.group)
                payload = None
                break
            if self.rank % (2 * step) == 0 and self.rank + step < self.world_size:
                box = [None]
                dist.recv_object_list(box, src=self.rank + step, group=self.group)
                payload = combine(payload, box[0])
            step *= 2
        return payload if self.rank == 0 else None

    # ----- the audit's merge points ------------------------------------------------------------------
    def sync_probe(self, state) -> None:
        """Merge the position probe's training statistics of all ranks and give them to every rank.

        After this, each rank's probe holds all training statistics plus only its own test counts
        (so :meth:`reduce_state` counts the training statistics once). Layers that failed (non-finite
        values) on any rank are marked failed everywhere. A rank that resumed from a checkpoint made
        after the sync keeps the merged statistics it has; the others take them from it.
        """
        failed = self.all_gather(dict(state.failed))
        for other in failed:
            for layer, message in other.items():
                state.failed.setdefault(layer, message)
        if not state.probe:
            state.progress[_SYNCED] = 1
            return
        synced = self.all_gather(bool(state.progress.get(_SYNCED)))
        own = {layer: acc.state_dict() for layer, acc in state.probe.items()}
        if any(synced):
            src = synced.index(True)
            train = self.broadcast({k: probe_train_only(v) for k, v in own.items()} if self.rank == src else None, src)
        else:
            train = self.reduce({k: probe_train_only(v) for k, v in own.items()}, _merge_probe_dicts)
            train = self.broadcast(train, 0)
        cls = type(next(iter(state.probe.values())))
        for layer in state.probe:
            acc = cls.from_state_dict(train[layer])
            acc.merge(cls.from_state_dict(probe_test_only(own[layer])))
            state.probe[layer] = acc
        state.progress[_SYNCED] = 1

    def reduce_state(self, state):
        """Merge every rank's :class:`~sdaudit.audit.state.AuditState` on rank 0 (returned there; None elsewhere)."""
        payload = state.state_dict()
        if self.rank != 0:
            payload = _without_probe_training(payload)

        def combine(mine: dict, theirs: dict) -> dict:
            a, b = state.empty_like(), state.empty_like()
            a.load_state_dict(mine)
            b.load_state_dict(theirs)
            return a.merge(b).state_dict()

        merged = self.reduce(payload, combine)
        if self.rank != 0:
            return None
        result = state.empty_like()
        result.load_state_dict(merged)
        result.progress = dict(state.progress)
        return result


def _block(items: list, rank: int, world: int) -> list:
    """The ``rank``-th of ``world`` contiguous, nearly equal blocks of ``items``."""
    n = len(items)
    return items[rank * n // world:(rank + 1) * n // world]


# ----- the position probe's state split into training statistics and test counts --------------------------
def _probe_class(state: dict):
    from .. import analyses
    from ..analyses.probe_paper import PaperProbeAccumulator

    name = str(np.asarray(state["__class__"]))
    return PaperProbeAccumulator if name == "PaperProbeAccumulator" else getattr(analyses, name)


def probe_train_only(state: dict) -> dict:
    """A probe accumulator's state dict with its test counts removed (the accumulator says which are which)."""
    return _probe_class(state).train_only_state(state)


def probe_test_only(state: dict) -> dict:
    """A probe accumulator's state dict with its training statistics removed."""
    return _probe_class(state).test_only_state(state)


def _merge_probe_dicts(a: dict, b: dict) -> dict:
    return {layer: _probe_class(a[layer]).from_state_dict(a[layer]).merge(
        _probe_class(b[layer]).from_state_dict(b[layer])).state_dict() for layer in a}


def _without_probe_training(payload: dict) -> dict:
    """An AuditState state dict whose probe parts keep only the test counts."""
    grouped: dict[str, dict] = {}
    out = {}
    for key, value in payload.items():
        if key.startswith(_PROBE) and "|" in key:
            part, sub = key.split("|", 1)
            grouped.setdefault(part, {})[sub] = value
        else:
            out[key] = value
    for part, sd in grouped.items():
        out.update({f"{part}|{k}": v for k, v in probe_test_only(sd).items()})
    return out


# ----- spawning local processes ----------------------------------------------------------------------------
def free_port() -> int:
    """A free TCP port on localhost."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, model_spec, load_kwargs: dict, images, out: str, settings,
            audit_kwargs: dict, threads: int | None) -> None:
    import torch

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads:
        torch.set_num_threads(threads)
    shard = init_from_env()
    try:
        from . import audit
        from ..models import load_model

        kwargs = dict(load_kwargs)
        if kwargs.get("device", "auto") in ("auto", "cuda") and torch.cuda.is_available() \
                and torch.cuda.device_count() >= world:
            kwargs["device"] = f"cuda:{rank}"
        elif kwargs.get("device", "auto") == "auto":
            kwargs["device"] = "cpu"
        model = load_model(model_spec, **kwargs)
        audit(model, images, out, settings, shard=shard,
              **{**audit_kwargs, "progress": audit_kwargs.get("progress", True) and rank == 0})
    finally:
        _dist().destroy_process_group()


def audit_multiprocess(model: str, images, out: str | Path, settings=None, *, num_processes: int = 2,
                       load_kwargs: dict | None = None, threads: int | None = None, **audit_kwargs) -> dict:
    """Run :func:`sdaudit.audit.audit` in ``num_processes`` local processes, each on its share of the images.

    ``model`` is a model spec (each process loads it; ``load_kwargs`` go to
    :func:`~sdaudit.models.load_model`; with ``device`` 'auto' each process takes its own GPU when there
    are at least ``num_processes``, else the CPU). ``threads``: torch threads per process (default: the
    CPU cores divided among the processes). Returns the results written to ``out/results.json``.
    """
    import json

    import torch.multiprocessing as mp

    from .run import AuditSettings

    if num_processes < 1:
        raise UsageError("num_processes must be at least 1")
    if not isinstance(model, str):
        raise TypeError("audit_multiprocess takes a model spec (each process loads the model itself)")
    if audit_kwargs.get("keep_store"):
        raise UsageError("keep_store is not supported with several processes")
    settings = settings or AuditSettings()
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // num_processes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(images, (list, tuple)):
        images = [str(i) for i in images]
    elif images is not None:
        images = str(images)
    mp.spawn(_worker, args=(num_processes, free_port(), model, dict(load_kwargs or {}), images, str(out), settings,
                            audit_kwargs, threads), nprocs=num_processes, join=True)
    return json.loads((out / "results.json").read_text())
