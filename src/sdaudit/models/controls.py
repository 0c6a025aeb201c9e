"""Control models: what the audit's numbers look like when nothing was learned, or without zero padding.

A finding is only a finding if a control does not show it too (see design.md section 9: with random
weights the probe reaches 0.98 on small grids and corner ratios span 0.23-1.92):

``untrained``        the same denoiser architecture with freshly initialised weights (diffusers' own
                     initialisation under ``torch.manual_seed(seed)``, seed 1 by default); VAE, text encoder and schedule
                     unchanged, so the inputs are the same and only the learned denoiser is removed.
``circular-padding`` the same weights, every zero-padded convolution of the denoiser switched to circular
                     padding: the map wraps around, so a convolution can no longer tell where the edge
                     is. Positional information that comes from zero padding (Zhou et al., ICML 2025)
                     should vanish; what remains was learned some other way. The VAE is left as it is.

Both return a new :class:`~sdaudit.models.LoadedModel` (the original is not modified) whose identity
names the control, so stores and results of a control can never be mistaken for the model's own.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from ..errors import UsageError
from ..settings import CONTROLS
from .devices import place
from .hashing import state_dict_sha256
from .loaded import LoadedModel

# not 0: sdaudit's own random-weight models (tiny, arch:*) are drawn with seed 0, and their untrained control
# must be another draw, not the same weights again
DEFAULT_CONTROL_SEED = 1


def control_model(model: LoadedModel, control: str, *, seed: int = DEFAULT_CONTROL_SEED) -> LoadedModel:
    """``model`` turned into the named control (``untrained`` or ``circular-padding``)."""
    if control == "untrained":
        denoiser = _fresh_denoiser(model.denoiser, seed)
        label = f"untrained (seed {seed})"
    elif control == "circular-padding":
        denoiser = circular_padding(model.denoiser)
        label = "circular padding"
    else:
        raise UsageError(f"unknown control '{control}'; choose one of {', '.join(CONTROLS)}")
    spec = dataclasses.replace(model.spec, name=f"{model.spec.name} [{label}]")
    extra = {**model.extra, "control": {"kind": control, "label": label,
                                        "seed": seed if control == "untrained" else None, "of": model.identity()}}
    return dataclasses.replace(model, spec=spec, denoiser=denoiser, weights_sha256=state_dict_sha256(denoiser),
                               extra=extra)


def _fresh_denoiser(denoiser: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The same architecture (same config) with diffusers' initialisation, seeded, on the same device/dtype."""
    param = next(denoiser.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(denoiser).from_config(denoiser.config)
    return place(fresh, param.device, param.dtype)


def circular_padding(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``module`` whose zero-padded ``Conv2d`` layers pad circularly instead.

    Only convolutions with a non-zero padding change; their weights and output shapes stay the same.
    """
    out = copy.deepcopy(module)
    changed = 0
    for layer in out.modules():
        if isinstance(layer, torch.nn.Conv2d) and layer.padding_mode == "zeros" and any(
                p > 0 for p in _padding(layer)):
            layer.padding_mode = "circular"  # Conv2d then pads with F.pad(mode="circular") and convolves unpadded
            changed += 1
    if not changed:
        raise UsageError("the denoiser has no zero-padded convolution to switch to circular padding")
    return out


def _padding(layer: torch.nn.Conv2d) -> tuple[int, ...]:
    if isinstance(layer.padding, str):
        raise UsageError(f"convolution with padding={layer.padding!r} cannot be switched to circular padding")
    return tuple(int(p) for p in layer.padding)


def is_random_weights(model: LoadedModel) -> bool:
    """Whether the denoiser's weights are random (``tiny``, ``arch:*`` or the untrained control)."""
    control = model.extra.get("control", {})
    return model.spec.kind in ("tiny", "arch") or control.get("kind") == "untrained"
