"""Where a loaded model's parts live between uses, and the prompt's conditioning encoded once per model.

Big models (SDXL, SD3 with T5, FLUX with T5-XXL) spend much of the accelerator's memory on parts that run once:
the text encoders run for the one prompt of an audit, the VAE once per batch. A model's ``placement`` says which
parts are parked on the CPU and moved to its device only while they run (:func:`on_device`):

``keep``                everything stays on the device (the CPU default: nothing to free).
``free-text-encoders``  the text encoders go to the CPU once the prompt is encoded (the accelerator default:
                        an audit encodes one prompt, so they are not needed again; a new prompt brings them
                        back for its encoding).
``offload``             the text encoders and the VAE live on the CPU and visit the device while they run
                        (diffusers' ``enable_model_cpu_offload`` idea, for models whose parts do not fit at once).

None changes a number: the same modules run on the same device in the same dtype, only their memory moves.

:func:`prompt_conditioning` encodes a prompt once per (model, prompt, protocol): every extractor of an audit
(the passes, noise seeds, timesteps, controls that share the text encoders) reuses it, so the encoders run once
per audit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from ..errors import UsageError
from ..validation import did_you_mean

PLACEMENTS = ("keep", "free-text-encoders", "offload")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
_PARKED = {"keep": (), "free-text-encoders": TEXT_ENCODERS, "offload": TEXT_ENCODERS + ("vae",)}
PARK_DEVICE = torch.device("cpu")


def resolve_placement(placement: str | None, device: torch.device) -> str:
    """'auto' (or None) is ``free-text-encoders`` on an accelerator and ``keep`` on the CPU; other names are
    checked against :data:`PLACEMENTS`."""
    if placement in (None, "auto"):
        return "keep" if device.type == "cpu" else "free-text-encoders"
    if placement not in PLACEMENTS:
        raise UsageError(f"unknown placement '{placement}'{did_you_mean(placement, PLACEMENTS)}; use auto or one of "
                         f"{', '.join(PLACEMENTS)}")
    return placement


def apply_placement(model, placement: str | None = "auto"):
    """Set ``model.placement`` (resolved) and park what it parks from the start (``offload``: text encoders and
    VAE to the CPU); returns the model."""
    model.placement = resolve_placement(placement, model.device)
    if model.placement == "offload":
        for name in _PARKED["offload"]:
            _move(getattr(model, name, None), PARK_DEVICE)
    return model


def _move(module: torch.nn.Module | None, device: torch.device) -> bool:
    """Move ``module`` to ``device`` if it is elsewhere; whether it moved."""
    if module is None:
        return False
    param = next(module.parameters(), None)
    if param is None or param.device == device:
        return False
    module.to(device)
    return True


def _release(device: torch.device) -> None:
    """Give the cached blocks of a CUDA device back, so that the freed memory is usable by others too."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def on_device(model, names: Sequence[str]) -> Iterator[None]:
    """Run the block with the named parts on ``model.device``; those the placement parks go back to the CPU after."""
    parked = [n for n in names if n in _PARKED[getattr(model, "placement", "keep")]]
    for name in parked:
        _move(getattr(model, name, None), model.device)
    try:
        yield
    finally:
        moved = [_move(getattr(model, name, None), PARK_DEVICE) for name in parked]
        if any(moved):
            _release(model.device)


def prompt_conditioning(model, prompt: str, protocol: str):
    """The family's conditioning of ``prompt`` under ``protocol`` (:meth:`ModelFamily.encode_prompt`), encoded
    once per model and kept in ``model.prompt_cache``; the text encoders run on the device and are parked after
    as the placement says. The key holds the encoders' identities, so a copy of the model with other encoders
    (``dataclasses.replace``) never reads another's conditioning."""
    encoders = tuple(id(getattr(model, name, None)) for name in TEXT_ENCODERS)
    key = (prompt, protocol, model.family.name, str(model.device), str(model.dtype), encoders)
    if key not in model.prompt_cache:
        with on_device(model, TEXT_ENCODERS):
            model.prompt_cache[key] = model.family.encode_prompt(model, prompt, protocol=protocol)
    return model.prompt_cache[key]
