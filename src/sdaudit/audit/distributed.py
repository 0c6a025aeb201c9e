"""Multi-process audits: start them (local processes, or under a launcher) and hand each its shard.

Ways to start one:

* ``accelerate launch --multi_gpu --num_processes K -m sdaudit audit ...`` or ``torchrun --nproc-per-node K
  -m sdaudit audit ...`` (``accelerate launch --cpu`` starts a single process): the launcher sets
  ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; :func:`init_from_env` joins the
  group and puts each process on GPU ``LOCAL_RANK`` (when there are GPUs), and :func:`sdaudit.audit.audit`
  shards automatically.
* ``sdaudit audit --num-processes K ...`` or :func:`audit_multiprocess`: spawns K local processes
  (``torch.multiprocessing``, gloo over a free localhost TCP port), one per GPU when there are at
  least K GPUs, else on the CPU with ``cores / K`` threads each.

How the images are split and the accumulators merged is :mod:`sdaudit.audit.sharding`. Only rank 0
writes results.json, the figures, the maps and the report; every rank returns the same results dict.
``keep_store`` (one zarr store written by several processes) is not supported.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ..audit_results import read_results
from ..errors import UsageError
from ..settings import AuditSettings
from .api import audit
from .sharding import init_from_env

__all__ = ["audit_multiprocess", "free_port", "init_from_env"]


def free_port() -> int:
    """A free TCP port on localhost."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class _Job:
    """What every spawned process is given: the group, the model to load, and the audit to run."""

    world: int
    port: int
    model_spec: str
    load_kwargs: dict
    images: object
    out: str
    settings: AuditSettings
    audit_kwargs: dict
    threads: int | None

    def device(self, rank: int, cuda_count: int) -> str:
        """This rank's device: its own GPU when there is one per process, else the CPU (for 'auto')."""
        asked = self.load_kwargs.get("device", "auto")
        if asked in ("auto", "cuda") and cuda_count >= self.world:
            return f"cuda:{rank}"
        return "cpu" if asked == "auto" else asked


def _worker(rank: int, job: _Job) -> None:
    import torch
    import torch.distributed as dist

    from ..models import load_model

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(job.world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(job.world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job.port))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if job.threads:
        torch.set_num_threads(job.threads)
    shard = init_from_env()
    try:
        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        model = load_model(job.model_spec, **{**job.load_kwargs, "device": job.device(rank, cuda_count)})
        audit(model, job.images, job.out, job.settings, shard=shard,
              **{**job.audit_kwargs, "progress": job.audit_kwargs.get("progress", True) and rank == 0})
    finally:
        dist.destroy_process_group()


def audit_multiprocess(model: str, images, out: str | Path, settings: AuditSettings | None = None, *,
                       num_processes: int = 2, load_kwargs: dict | None = None, threads: int | None = None,
                       **audit_kwargs) -> dict:
    """Run :func:`sdaudit.audit.audit` in ``num_processes`` local processes, each on its share of the images.

    ``model`` is a model spec (each process loads it; ``load_kwargs`` go to
    :func:`~sdaudit.models.load_model`; with ``device`` 'auto' each process takes its own GPU when there
    are at least ``num_processes``, else the CPU). ``threads``: torch threads per process (default: the
    CPU cores divided among the processes). Returns the results written to ``out/results.json``.
    """
    import torch.multiprocessing as mp

    if num_processes < 1:
        raise UsageError("num_processes must be at least 1")
    if not isinstance(model, str):
        raise TypeError("audit_multiprocess takes a model spec (each process loads the model itself)")
    if audit_kwargs.get("keep_store"):
        raise UsageError("keep_store is not supported with several processes")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(images, (list, tuple)):
        images = [str(i) for i in images]
    elif images is not None:
        images = str(images)
    job = _Job(num_processes, free_port(), model, dict(load_kwargs or {}), images, str(out),
               settings or AuditSettings(), audit_kwargs,
               threads if threads is not None else max(1, (os.cpu_count() or 1) // num_processes))
    mp.spawn(_worker, args=(job,), nprocs=num_processes, join=True)
    return read_results(out).to_dict()
