"""Sinks for captured layer outputs: where the model family's hooks put each layer's grid.

The hooks themselves (registration, early stop, per-layer compilation) are family-independent and
live in :mod:`sdaudit.models.hooks`; the family runs them (:meth:`ModelFamily.run_denoiser`).
"""

from __future__ import annotations

import torch


class DeviceToHost:
    """A :func:`capture_layers` sink for CUDA: copies each captured output to pinned host memory on a side
    stream, so that the copies overlap the rest of the U-Net's forward pass.

    Each copy is queued on ``stream`` after the work that produced the tensor (``wait_stream``), runs
    asynchronously into a page-locked buffer (from PyTorch's caching host allocator, so buffers are
    reused from pass to pass), and ``record_stream`` keeps the GPU memory from being reused before the
    copy has read it. Outputs are copied in the model's dtype (half the bytes for float16);
    :meth:`collect` (to be called outside ``torch.inference_mode``) waits for the copies and returns
    float32 CPU tensors.
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(device=self.device)
        self.host: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        t = tensor.detach()
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            host.copy_(t, non_blocking=True)
        t.record_stream(self.stream)
        self.host[name] = host

    def collect(self) -> dict[str, torch.Tensor]:
        """Wait for every queued copy; the outputs as float32 CPU tensors."""
        self.stream.synchronize()
        # float() / clone() out of inference mode: ordinary tensors, and the pinned buffers go back to the cache
        out = {name: host.float() if host.dtype != torch.float32 else host.clone() for name, host in self.host.items()}
        self.host = {}
        return out
