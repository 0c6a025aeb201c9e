"""How a run of the passes is spread over processes: a strategy object the run calls at fixed points.

:class:`SingleProcess` is the ordinary audit. :class:`Shard` is this process's part of a multi-process
audit: the images are sharded over processes (CPU cores or GPUs) and the accumulators merged
(``torch.distributed``, on a gloo group: the states are small numpy arrays, so no GPU collective is
needed even when the passes run on GPUs). Merged results equal a single-process run's up to float
rounding (sums taken in another order).

The one ordering constraint is the position probe's: a test image can only be scored once the
training statistics of *all* training images are known. So the full pass runs in two segments: each
process streams its block of the training images (images ``0 .. n_train-1``, split in contiguous
blocks), the training statistics are merged and handed to every process (:meth:`Shard.share_training`),
then each process streams its block of the test images. The cropped passes run over all of a
process's images. At the end :meth:`Shard.reduce_state` merges every accumulator on rank 0 (a binary
tree of point-to-point transfers, so that no process ever holds more than two states); the training
statistics, which every process holds after the sync, count once. Only rank 0 writes the outputs
(:meth:`Shard.finish`); every rank returns the same results. Each process checkpoints to its own
``.checkpoint.rank<R>of<K>.npz``.

A launcher (``accelerate launch``, ``torchrun``, :func:`sdaudit.audit.distributed.audit_multiprocess`)
describes the group in the environment; :func:`init_from_env` joins it.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from pathlib import Path

_SYNCED = "probe-sync"  # the progress entry that says this process holds every shard's training statistics


class SingleProcess:
    """The ordinary audit: one process, every image, no merging."""

    rank, world_size, is_main = 0, 1, True

    def checkpoint_path(self, out: Path) -> Path:
        return out / ".checkpoint.npz"

    def own_fingerprint(self, fingerprint: str) -> str:
        return fingerprint

    def segments(self, items: Sequence, n_train: int) -> list[list]:
        """One segment: the probe scores test images as soon as training is complete."""
        return [list(items)]

    def share_training(self, state) -> None:
        """Nothing to share between segments (there is one)."""

    def reduce_state(self, state):
        return state

    def stats(self) -> dict:
        return {}

    def finish(self, write: Callable[[], dict]) -> dict:
        return write()


def _dist():
    import torch.distributed as dist

    return dist


def _env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env(timeout_s: float = 3600.0) -> "Shard | None":
    """Join the process group a launcher (accelerate, torchrun, ``audit_multiprocess``) describes in the
    environment, and select GPU ``LOCAL_RANK`` when there are GPUs; None when not launched so.

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


def _block(items: list, rank: int, world: int) -> list:
    """The ``rank``-th of ``world`` contiguous, nearly equal blocks of ``items``."""
    n = len(items)
    return items[rank * n // world:(rank + 1) * n // world]


class Shard:
    """This process's part of a multi-process audit: its rank, the group size, and the merge steps.

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

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ----- the run's strategy --------------------------------------------------------------------------
    def checkpoint_path(self, out: Path) -> Path:
        return out / f".checkpoint.rank{self.rank}of{self.world_size}.npz"

    def own_fingerprint(self, fingerprint: str) -> str:
        """This process's checkpoint fingerprint, after checking that every process audits the same thing."""
        self.check_same(fingerprint, "the audit's model, settings and images")
        return f"{fingerprint}|rank {self.rank} of {self.world_size}"

    def segments(self, items: Sequence, n_train: int) -> list[list]:
        """[this rank's block of the first ``n_train`` items, its block of the rest] (contiguous blocks)."""
        return [_block(list(items[:n_train]), self.rank, self.world_size),
                _block(list(items[n_train:]), self.rank, self.world_size)]

    def stats(self) -> dict:
        return {"processes": self.world_size}

    def share_training(self, state) -> None:
        """Merge the position probe's training statistics (and the mitigations' fits) of all ranks and give them
        to every rank.

        After this, each rank's probe holds all training statistics plus only its own test counts
        (so :meth:`reduce_state` counts the training statistics once). Layers that failed (non-finite
        values) on any rank are marked failed everywhere. A rank that resumed from a checkpoint made
        after the sync keeps the merged statistics it has; the others take them from it.
        """
        for failed in self.all_gather(dict(state.failed)):
            state.add_failed(failed)
        if state.probe:
            synced = self.all_gather(bool(state.progress.get(_SYNCED)))
            if any(synced):
                src = synced.index(True)
                train = self.broadcast(state.probe_training() if self.rank == src else None, src)
            else:
                train = self.broadcast(self.reduce(state.probe_training(), state.merge_probe_training), 0)
            state.take_probe_training(train)
        if state.mitigations:  # the mitigations' fits likewise (sdaudit.audit.mitigations.share_fits)
            state.take_mitigation_fits(self.all_gather(state.mitigation_fits()), self.rank)
        state.progress[_SYNCED] = 1

    def reduce_state(self, state):
        """Merge every rank's :class:`~sdaudit.audit.state.AuditState` on rank 0 (returned there; None elsewhere)."""
        def combine(mine: dict, theirs: dict) -> dict:
            a, b = state.empty_like(), state.empty_like()
            a.load_state_dict(mine)
            b.load_state_dict(theirs)
            return a.merge(b).state_dict()

        # the training statistics are on every rank after the sync: only rank 0's count
        merged = self.reduce(state.state_dict(probe_training=self.is_main), combine)
        if not self.is_main:
            return None
        result = state.empty_like()
        result.load_state_dict(merged)
        result.progress = dict(state.progress)
        return result

    def finish(self, write: Callable[[], dict]) -> dict:
        """Rank 0 runs ``write`` (the outputs) and hands its results to every rank; an error there is raised
        on every rank."""
        if not self.is_main:
            results = self.broadcast(None)
            if isinstance(results, dict) and "__error__" in results:
                raise RuntimeError(f"rank 0 failed to write the results: {results['__error__']}")
            return results
        try:
            results = write()
        except BaseException as error:
            self.broadcast({"__error__": repr(error)})
            raise
        return self.broadcast(results)

    # ----- collectives -----------------------------------------------------------------------------
    def all_gather(self, obj) -> list:
        out = [None] * self.world_size
        _dist().all_gather_object(out, obj, group=self.group)
        return out

    def broadcast(self, obj, src: int = 0):
        box = [obj if self.rank == src else None]
        _dist().broadcast_object_list(box, src=src, group=self.group)
        return box[0]

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
