"""Forward hooks that capture layer outputs of a U-Net, and stop the pass after the last one needed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch

from ..layers import get_module


class _StopForward(Exception):
    """Raised by the hook of the last requested layer: nothing after it needs computing."""


def first_tensor(output) -> torch.Tensor:
    """A module's output as one tensor: modules that return a tuple contribute its first element."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if hasattr(output, "sample") and not isinstance(output, torch.Tensor):  # diffusers output dataclasses
        output = output.sample
    return output


@contextmanager
def capture_layers(unet: torch.nn.Module, names: Sequence[str], sink: Callable[[str, torch.Tensor], None],
                   stop_after_last: bool = True):
    """Register forward hooks on ``names``; each output goes to ``sink(name, tensor)``.

    ``names`` must be in execution order (as :func:`sdaudit.layers.all_layers` lists them). With
    ``stop_after_last`` the hook of the last layer aborts the forward pass; run the model through
    :func:`run_until_captured` so that this early stop is not an error.
    """
    handles = []
    last = names[-1] if names else None

    def make_hook(name: str):
        def hook(module, args, output):
            sink(name, first_tensor(output))
            if stop_after_last and name == last:
                raise _StopForward

        return hook

    try:
        for name in names:
            handles.append(get_module(unet, name).register_forward_hook(make_hook(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def run_until_captured(forward: Callable[[], object]) -> None:
    """Call ``forward()``; an early stop by :func:`capture_layers` ends it quietly."""
    try:
        forward()
    except _StopForward:
        pass


def unet_extra_inputs(unet: torch.nn.Module, batch: int, size_px: int, device, dtype) -> dict:
    """Extra conditioning some U-Nets require (SDXL's pooled text embedding and size ids).

    sdaudit feeds neutral values (zero pooled embedding; original and target size = the input
    size, no crop), the conditioning of an unconditional pass at that size.
    """
    cfg = unet.config
    if getattr(cfg, "addition_embed_type", None) != "text_time":
        return {}
    n_time = 6
    text_dim = cfg.projection_class_embeddings_input_dim - n_time * cfg.addition_time_embed_dim
    time_ids = torch.tensor([size_px, size_px, 0, 0, size_px, size_px], device=device, dtype=dtype).repeat(batch, 1)
    text_embeds = torch.zeros(batch, text_dim, device=device, dtype=dtype)
    return {"added_cond_kwargs": {"text_embeds": text_embeds, "time_ids": time_ids}}


def capture_shapes(unet: torch.nn.Module, names: Sequence[str], latent_size: int) -> list[tuple[int, int, int]]:
    """Output shape (C, h, w) of each layer for a ``latent_size`` x ``latent_size`` latent.

    Runs on the "meta" device when the U-Net lives there (no computation), else on a copy of the
    inputs on the U-Net's device.
    """
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    shapes: dict[str, tuple[int, int, int]] = {}
    cross_dim = unet.config.cross_attention_dim
    cross_dim = cross_dim[0] if isinstance(cross_dim, (list, tuple)) else cross_dim
    sample = torch.zeros(1, unet.config.in_channels, latent_size, latent_size, device=device, dtype=dtype)
    context = torch.zeros(1, 77, cross_dim, device=device, dtype=dtype)
    timestep = torch.tensor([1], device=device)
    extra = unet_extra_inputs(unet, 1, latent_size * 8, device, dtype)

    def sink(name, tensor):
        shapes[name] = tuple(tensor.shape[1:])

    with torch.no_grad(), capture_layers(unet, names, sink):
        run_until_captured(lambda: unet(sample, timestep, encoder_hidden_states=context, **extra))
    return [shapes[n] for n in names]


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


def attention_processors(unet: torch.nn.Module) -> dict[str, int]:
    """How many attention modules use each processor class (``AttnProcessor2_0`` = PyTorch SDPA)."""
    counts: dict[str, int] = {}
    for processor in getattr(unet, "attn_processors", {}).values():
        name = type(processor).__name__
        counts[name] = counts.get(name, 0) + 1
    return counts


def compile_layers(unet: torch.nn.Module, names: Sequence[str], **compile_kwargs) -> int:
    """``torch.compile`` the ``forward`` of each named module, in place and once; returns how many were new.

    Compiling module by module keeps the capture hooks (which run around ``forward``) and the early
    stop outside the compiled code, so they cause no graph breaks and no recompilation when the
    hooked layers change from pass to pass. Every resnet and transformer block (where the compute is)
    is a hookable layer.
    """
    import torch._dynamo

    # every resnet (and every transformer block) shares one forward code object, compiled once per
    # distinct shape: raise dynamo's per-code-object limit (8) above the number of distinct layers
    for option in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, option):
            setattr(torch._dynamo.config, option, max(getattr(torch._dynamo.config, option), 8 * len(names)))
    done = 0
    for name in names:
        module = get_module(unet, name)
        if getattr(module, "_sdaudit_compiled", False):
            continue
        module.forward = torch.compile(module.forward, **compile_kwargs)
        module._sdaudit_compiled = True
        done += 1
    return done
