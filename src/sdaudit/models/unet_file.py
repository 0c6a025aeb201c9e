"""Models published as a U-Net weights file over another pipeline: SDXL-Lightning.

ByteDance's SDXL-Lightning repo holds no pipeline, only one ``.safetensors`` file of U-Net weights (diffusers'
key layout) per step count, meant to replace the U-Net of SDXL base 1.0 (the published helper's
``load_sdxl_lightning``: ``UNet2DConditionModel.from_config(<base unet config>)`` + ``load_state_dict`` of the file
over ``StableDiffusionXLPipeline.from_pretrained(<base>)``). Here the base pipeline's components load as any other
(a hub id or a local folder), then the file's weights replace the U-Net's, strictly: a file of another
architecture fails with the keys that do not fit.

The 1-step file (``..._unet_x0``) predicts x0 rather than noise; that changes sampling, not the features of one
denoiser pass, so the base scheduler is kept (the noise schedule is SDXL's either way).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SdauditError

LIGHTNING_REPO = "ByteDance/SDXL-Lightning"
LIGHTNING_STEPS = (1, 2, 4, 8)


class UnetFileError(SdauditError, ValueError):
    """A U-Net weights file that does not fit the base pipeline's U-Net."""


def lightning_file(steps: int) -> str:
    """The SDXL-Lightning U-Net file for ``steps`` sampling steps (the helper's names)."""
    if steps not in LIGHTNING_STEPS:
        raise ValueError(f"SDXL-Lightning has {LIGHTNING_STEPS} step files, not {steps}")
    return "sdxl_lightning_1step_unet_x0.safetensors" if steps == 1 else f"sdxl_lightning_{steps}step_unet.safetensors"


def download_unet_file(repo_id: str, filename: str, *, revision: str | None, local_files_only: bool) -> Path:
    """The file from the Hugging Face cache, or downloaded into it."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=local_files_only))


def replace_unet_weights(parts: dict, path: str | Path) -> dict:
    """``parts`` (a pipeline's components) with the U-Net's weights replaced by those of the file at ``path``
    (diffusers' key layout, every key of the U-Net, no other), kept in the U-Net's dtype."""
    from safetensors.torch import load_file

    unet = parts["unet"]
    dtype = next(unet.parameters()).dtype
    state = {k: v.to(dtype) for k, v in load_file(str(path)).items()}
    try:
        unet.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[:3]
        raise UnetFileError(f"the U-Net weights in {path} do not fit the base pipeline's U-Net: "
                            + " ".join(line.strip() for line in first)) from None
    return parts


def unet_file_sha256(path: str | Path) -> str:
    """The file's digest: what identifies the weights (the base pipeline's U-Net weights are all replaced)."""
    from .hashing import file_sha256

    return file_sha256(str(path))


def load_with_unet_file(base: str, path: str | Path, load_components) -> tuple[dict, str]:
    """The components of the ``base`` pipeline (``load_components(base)``) with the U-Net weights of the file at
    ``path``, and the file's digest."""
    return replace_unet_weights(load_components(base), path), unet_file_sha256(path)

