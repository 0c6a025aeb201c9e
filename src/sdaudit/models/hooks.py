"""Forward hooks on named submodules of any denoiser: capture outputs, stop the pass early, compile per layer.

Family-independent: a layer name is resolved with ``nn.Module.get_submodule`` on its dotted module
path, so this works for a U-Net as for a transformer. What a captured output means (which element
of a tuple, how tokens make a grid) is the family's business (:meth:`ModelFamily.to_grid`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch

from ..layer_names import LayerError, store_key


class _StopForward(Exception):
    """Raised by the hook of the last requested layer: nothing after it needs computing."""


def get_module(root: torch.nn.Module, name: str) -> torch.nn.Module:
    """The submodule a layer name points at (``up_blocks[1].upsamplers[0]`` or the dotted spelling)."""
    try:
        return root.get_submodule(store_key(name))
    except AttributeError:
        raise LayerError(f"layer '{name}' does not exist in this model") from None


@contextmanager
def capture_layers(root: torch.nn.Module, names: Sequence[str], sink: Callable[[str, object], None],
                   stop_after_last: bool = True):
    """Register forward hooks on ``names``; each raw module output goes to ``sink(name, output)``.

    ``names`` must be in execution order. With ``stop_after_last`` the hook of the last layer
    aborts the forward pass; run the model through :func:`run_until_captured` so that this early
    stop is not an error. The hooks are removed on leaving, whatever happened.
    """
    handles = []
    last = names[-1] if names else None

    def make_hook(name: str):
        def hook(module, args, output):
            sink(name, output)
            if stop_after_last and name == last:
                raise _StopForward

        return hook

    try:
        for name in names:
            handles.append(get_module(root, name).register_forward_hook(make_hook(name)))
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


def compile_layers(root: torch.nn.Module, names: Sequence[str], **compile_kwargs) -> int:
    """``torch.compile`` the ``forward`` of each named module, in place and once; returns how many were new.

    Compiling module by module keeps the capture hooks (which run around ``forward``) and the early
    stop outside the compiled code, so they cause no graph breaks and no recompilation when the
    hooked layers change from pass to pass.
    """
    import torch._dynamo

    # every resnet (and every transformer block) shares one forward code object, compiled once per
    # distinct shape: raise dynamo's per-code-object limit (8) above the number of distinct layers
    for option in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, option):
            setattr(torch._dynamo.config, option, max(getattr(torch._dynamo.config, option), 8 * len(names)))
    done = 0
    for name in names:
        module = get_module(root, name)
        if getattr(module, "_sdaudit_compiled", False):
            continue
        module.forward = torch.compile(module.forward, **compile_kwargs)
        module._sdaudit_compiled = True
        done += 1
    return done


def attention_processors(root: torch.nn.Module) -> dict[str, int]:
    """How many attention modules use each processor class (``AttnProcessor2_0`` = PyTorch SDPA)."""
    counts: dict[str, int] = {}
    for processor in getattr(root, "attn_processors", {}).values():
        name = type(processor).__name__
        counts[name] = counts.get(name, 0) + 1
    return counts
