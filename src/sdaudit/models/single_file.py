"""Loading one Stable Diffusion checkpoint file in the original (LDM / CompVis) layout.

A single ``.safetensors`` or ``.ckpt`` file as distributed for SD-1.x / SD-2.x holds the U-Net
(``model.diffusion_model.*``), the VAE (``first_stage_model.*``) and the text encoder
(``cond_stage_model.transformer.*`` for SD-1's CLIP ViT-L, ``cond_stage_model.model.*`` for SD-2's
OpenCLIP ViT-H). The U-Net and the VAE are loaded by diffusers' public single-file API,
``from_single_file(state, config=<folder>, subfolder=..., local_files_only=True)``, with the
folder holding the configs that :mod:`sdaudit.models.single_file_plan` chose (sdaudit's bundled
``sd15``/``sd21`` folders, the user's folder, or a temporary one for configs inferred from shapes);
the CLIP text encoder, a transformers model, goes through diffusers' LDM converters. The file is
read by :mod:`sdaudit.models.checkpoint` first, so that every error names it. Nothing here touches
the network. SDXL files (two text encoders) go through :mod:`sdaudit.models.single_file_sdxl`.

The tokenizer is not in the file: it comes from the config folder's ``tokenizer/``, else from the
Hugging Face cache (offline), else the bundled byte-level tokenizer when the text encoder is
``tiny``'s; otherwise :class:`~sdaudit.models.load.ModelNotAvailableError` says what is missing.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import UsageError
from .checkpoint import CLIP_PREFIX, OPEN_CLIP_PREFIX, UNET_PREFIX, Checkpoint
from .registry import ARCH_CONFIGS, ModelNotAvailableError
from .single_file_plan import CONFIG_HELP, Plan, plan_components, read_json, text_kwargs
from .single_file_sdxl import is_sdxl_checkpoint, load_sdxl_single_file, sdxl_unet_config

logger = logging.getLogger(__name__)

TINY_VOCAB_SIZE = 514

# Hugging Face repos whose cached copy holds the right tokenizer, tried in order (offline only).
SD1_TOKENIZER_SOURCES: list[tuple[str, str]] = [
    ("openai/clip-vit-large-patch14", ""),
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
    ("runwayml/stable-diffusion-v1-5", "tokenizer"),
    ("CompVis/stable-diffusion-v1-4", "tokenizer"),
]
SD2_TOKENIZER_SOURCES: list[tuple[str, str]] = [
    ("stabilityai/stable-diffusion-2-1", "tokenizer"),
    ("stabilityai/stable-diffusion-2", "tokenizer"),
    ("stabilityai/stable-diffusion-2-1-base", "tokenizer"),
    ("stabilityai/stable-diffusion-2-base", "tokenizer"),
    ("stabilityai/sd-turbo", "tokenizer"),
]

# Converted text-encoder keys that CLIPTextModel has no parameter for (OpenCLIP's projection, old buffers).
_TEXT_KEYS_IGNORED = re.compile(r"(^|\.)(position_ids|text_projection\.weight|logit_scale)$")

# --------------------------------------------------------------------------------------------
# Building the components
# --------------------------------------------------------------------------------------------


def _empty_init():
    """Parameters on the meta device while a model is constructed (buffers stay real)."""
    from accelerate import init_empty_weights

    return init_empty_weights()


def _fit_error(what: str, detail: str, plan: Plan, ckpt: Checkpoint) -> ValueError:
    return ValueError(f"'{ckpt.name}': the {what} weights do not fit {plan.source}: {detail[:1500]}. "
                      f"Pass a matching config ({CONFIG_HELP}).")


def _missing_keys(cls, state: dict, folder: Path, component: str) -> list[str]:
    """The model's tensors that the converted ``state`` lacks (diffusers' own conversion, on a meta skeleton)."""
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    config = cls.load_config(str(folder), subfolder=component, local_files_only=True)
    with _empty_init():
        model = cls.from_config(config)
    convert = SINGLE_FILE_LOADABLE_CLASSES[cls.__name__]["checkpoint_mapping_fn"]
    return sorted(set(model.state_dict()) - set(convert(config=config, checkpoint=state)))


@contextmanager
def _config_folder(plan: Plan) -> Iterator[Path]:
    """A diffusers folder with the plan's ``unet/`` and ``vae/`` configs, for ``from_single_file(config=...)``.

    The given config folder or sdaudit's bundled one when its configs are exactly the plan's; else
    (the tiny model, an inpainting variant, a config inferred from shapes) a temporary folder.
    """
    from .offline_common import configs_dir

    wanted = {"unet": plan.unet, "vae": plan.vae}
    bundled = configs_dir() / plan.family if plan.family in ARCH_CONFIGS else None
    for folder in (plan.folder, bundled):
        if folder is not None and all(v is None or read_json(folder / c / "config.json") == v for c, v in wanted.items()):
            yield folder
            return
    with tempfile.TemporaryDirectory(prefix="sdaudit-config-") as tmp:
        for component, config in wanted.items():
            if config is not None:
                (Path(tmp) / component).mkdir()
                (Path(tmp) / component / "config.json").write_text(json.dumps(config))
        yield Path(tmp)


def _from_single_file(cls, state: dict, folder: Path, component: str, dtype: torch.dtype) -> torch.nn.Module:
    """diffusers' public single-file loader (its LDM-to-diffusers conversion), offline, config from ``folder``.

    diffusers leaves a weight the file lacks on the meta device and fails when it moves the model:
    that failure becomes a :class:`KeyError` listing the missing weights (the caller names the file).
    The model is cast to ``dtype`` afterwards, for the same reason.
    """
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its warnings name no file; the errors here do
    try:
        model = cls.from_single_file(state, config=str(folder), subfolder=component, local_files_only=True,
                                     low_cpu_mem_usage=True)
        return model.to(dtype).eval()
    except NotImplementedError:  # "Cannot copy out of meta tensor": a weight the file lacks
        raise KeyError(_missing_keys(cls, state, folder, component)) from None
    finally:
        diffusers_logging.set_verbosity(level)


def _build_unet(ckpt: Checkpoint, plan: Plan, folder: Path, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    if any(k.startswith("model_ema.") for k in ckpt.shapes):
        logger.warning("'%s' holds EMA weights too; as diffusers' from_single_file does by default, the non-EMA U-Net "
                       "weights (model.diffusion_model.*) are loaded", ckpt.name)
    try:
        return _from_single_file(UNet2DConditionModel, ckpt.tensors(UNET_PREFIX), folder, "unet", dtype)
    except KeyError as missing:
        raise _fit_error("U-Net", "Missing key(s) in state_dict: " + ", ".join(missing.args[0]), plan, ckpt) from None


def _build_vae(ckpt: Checkpoint, plan: Plan, folder: Path):
    from diffusers import AutoencoderKL

    if plan.vae is None:
        if plan.folder is not None and (plan.folder / "vae").is_dir():
            return AutoencoderKL.from_pretrained(str(plan.folder), subfolder="vae", local_files_only=True).eval()
        raise UsageError(f"'{ckpt.name}' has no VAE weights (keys starting with 'first_stage_model.'); pass a diffusers "
                         "folder with a vae/ subfolder as the single-file config to take the VAE from there")
    try:
        return _from_single_file(AutoencoderKL, ckpt.tensors(plan.vae_prefix), folder, "vae", torch.float32)
    except KeyError as missing:
        raise _fit_error("VAE", "Missing key(s) in state_dict: " + ", ".join(missing.args[0]), plan, ckpt) from None


def _build_text_encoder(ckpt: Checkpoint, plan: Plan, dtype: torch.dtype):
    """The CLIP text encoder: a transformers model, which diffusers' ``from_single_file`` does not load on its
    own; its weights go through diffusers' LDM converters and are loaded strictly."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    if plan.text is None:
        if plan.folder is not None and (plan.folder / "text_encoder").is_dir():
            model = CLIPTextModel.from_pretrained(str(plan.folder), subfolder="text_encoder", local_files_only=True)
            return model.to(dtype).eval()
        raise UsageError(f"'{ckpt.name}' has no text-encoder weights (keys starting with '{CLIP_PREFIX}' or "
                         f"'{OPEN_CLIP_PREFIX}'); pass a diffusers folder with a text_encoder/ subfolder as the "
                         "single-file config to take the text encoder from there")
    with _empty_init():
        model = CLIPTextModel(CLIPTextConfig(**text_kwargs(plan.text)))
    if plan.text_layout == "clip":
        state = convert_ldm_clip_checkpoint(ckpt.tensors(CLIP_PREFIX))
    else:
        state = convert_open_clip_checkpoint(model, ckpt.tensors(OPEN_CLIP_PREFIX), prefix=OPEN_CLIP_PREFIX)
    # CLIPTextModel lost its `text_model` wrapper in recent transformers; match whichever this one has
    wrapped = hasattr(model, "text_model")
    state = {("text_model." if wrapped else "") + k.removeprefix("text_model."): v for k, v in state.items()}
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items() if not _TEXT_KEYS_IGNORED.search(k)}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise _fit_error("text-encoder", " ".join(lines[1:4]), plan, ckpt) from None
    return model.eval()


def _cached_tokenizer_folder(repo: str, subfolder: str) -> Path | None:
    """The folder of a CLIP tokenizer (vocab.json + merges.txt) in the local Hugging Face cache, if there."""
    from huggingface_hub import try_to_load_from_cache

    files = []
    for name in ("vocab.json", "merges.txt"):
        found = try_to_load_from_cache(repo, f"{subfolder}/{name}" if subfolder else name)
        if not isinstance(found, str):
            return None
        files.append(Path(found))
    return files[0].parent if files[0].parent == files[1].parent else None


def _load_tokenizer(plan: Plan, source: str):
    """The tokenizer that goes with the text encoder, found offline, or a ModelNotAvailableError.

    (transformers 5's ``CLIPTokenizer.from_pretrained`` returns an empty 2-token tokenizer instead
    of failing when the files are absent, so every source is checked for its files and its size.)
    """
    vocab = int(plan.text.get("vocab_size", 49408)) if plan.text else None
    folder = plan.folder / "tokenizer" if plan.folder is not None else None
    if folder is not None and folder.is_dir():
        return _folder_tokenizer(plan.folder, vocab, source)
    if vocab == TINY_VOCAB_SIZE:
        from .offline_common import load_tokenizer_tiny

        return load_tokenizer_tiny()
    sd2 = plan.text_layout == "open_clip" or (plan.text is None and plan.family == "sd21")
    sources = SD2_TOKENIZER_SOURCES if sd2 else SD1_TOKENIZER_SOURCES
    tried: list[str] = []
    tokenizer = _cached_tokenizer(sources, vocab, tried)
    if tokenizer is None:
        raise _tokenizer_missing(source, sd2, vocab, sources, tried)
    return tokenizer


def _folder_tokenizer(folder: Path, vocab: int | None, source: str):
    """The tokenizer of a config folder's ``tokenizer/``, which must hold one and not outsize the text encoder."""
    from transformers import AutoTokenizer

    where = folder / "tokenizer"
    if not any((where / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        raise UsageError(f"the tokenizer folder '{where}' holds no tokenizer.json or vocab.json")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), subfolder="tokenizer", local_files_only=True)
    if vocab is not None and len(tokenizer) > vocab:
        raise UsageError(f"the tokenizer in '{where}' has {len(tokenizer)} tokens but the text encoder of "
                         f"'{source}' only {vocab}; they do not belong together")
    return tokenizer


def _cached_tokenizer(sources: list[tuple[str, str]], vocab: int | None, tried: list[str]):
    """The first tokenizer of ``sources`` in the local Hugging Face cache whose size is ``vocab``, or None;
    ``tried`` gets a line per source that did not serve."""
    from transformers import CLIPTokenizer

    for repo, subfolder in sources:
        label = f"{repo}{'/' + subfolder if subfolder else ''}"
        cached = _cached_tokenizer_folder(repo, subfolder)
        if cached is None:
            tried.append(f"{label} (not cached)")
            continue
        try:
            tokenizer = CLIPTokenizer.from_pretrained(str(cached), local_files_only=True)
        except Exception as error:  # noqa: BLE001 - a broken cache entry: try the next source
            tried.append(f"{label} ({type(error).__name__})")
            continue
        if vocab is None or len(tokenizer) == vocab:
            return tokenizer
        tried.append(f"{label} (has {len(tokenizer)} tokens, the text encoder {vocab})")
    return None


def _tokenizer_missing(source: str, sd2: bool, vocab: int | None, sources: list[tuple[str, str]],
                       tried: list[str]) -> ModelNotAvailableError:
    kind = "SD-2 OpenCLIP ViT-H/14" if sd2 else "SD-1 CLIP ViT-L/14"
    repo, subfolder = sources[0]
    include = f"'{subfolder}/*'" if subfolder else "'*.json' '*.txt'"
    return ModelNotAvailableError(
        f"the tokenizer for '{source}' is not on this machine: the checkpoint holds an {kind} text encoder "
        f"(vocabulary {vocab}) but no tokenizer, and none of these Hugging Face repos is in the local cache: "
        f"{', '.join(tried)}. Provide it in one of two ways:\n"
        f"  * pass a diffusers pipeline folder that has a tokenizer/ subfolder as the single-file config "
        f"(single_file_config=FOLDER), e.g. the model's own diffusers folder;\n"
        f"  * or download the tokenizer once where there is internet access,\n"
        f"        huggingface-cli download {repo} --include {include}\n"
        f"    and copy the Hugging Face cache (~/.cache/huggingface) to this machine.")


def _build_scheduler(plan: Plan):
    import diffusers

    cls = getattr(diffusers, plan.scheduler.get("_class_name", "PNDMScheduler"), diffusers.PNDMScheduler)
    return cls.from_config({k: v for k, v in plan.scheduler.items() if not k.startswith("_")})


# --------------------------------------------------------------------------------------------
# Entry points (called from sdaudit.models.load)
# --------------------------------------------------------------------------------------------


def single_file_unet_config(path: str, config: str | None = None) -> dict:
    """The U-Net config of a single checkpoint file, read from tensor shapes (safetensors: header only).

    Args:
        path: ``.safetensors`` / ``.ckpt`` file in the original Stable Diffusion layout.
        config: 'sd15', 'sd21', 'tiny', a diffusers folder, a cached repo id, or None to infer.

    Raises:
        ValueError: the file is missing, unreadable, not an SD checkpoint, or does not fit ``config``.
    """
    ckpt = Checkpoint(path)
    if is_sdxl_checkpoint(ckpt.shapes):
        return sdxl_unet_config(config)
    return dict(plan_components(ckpt.shapes, config, ckpt.name, ckpt.global_step).unet)


def load_single_file(path: str, config: str | None = None, torch_dtype=torch.float32) -> dict:
    """Load the components of one original-layout Stable Diffusion checkpoint file, offline.

    Returns ``{"unet", "vae", "text_encoder", "tokenizer", "scheduler"}`` like
    :func:`sdaudit.models.offline.build_tiny`, on the CPU in eval mode. The U-Net and text encoder
    are in ``torch_dtype``, the VAE in float32 (as the folder loader makes it).

    Raises:
        ValueError: the file is missing, unreadable, not an SD checkpoint, or its weights do not
            fit ``config``.
        ModelNotAvailableError: the tokenizer (or a cached config repo) is not on this machine.
    """
    ckpt = Checkpoint(path)
    if is_sdxl_checkpoint(ckpt.shapes):  # SDXL: diffusers' pipeline converter (models.single_file_sdxl)
        return load_sdxl_single_file(path, ckpt.shapes, config, torch_dtype)
    plan = plan_components(ckpt.shapes, config, ckpt.name, ckpt.global_step)
    tokenizer = _load_tokenizer(plan, ckpt.name)  # before the heavy part: fail fast
    with _config_folder(plan) as folder:
        parts = {
            "unet": _build_unet(ckpt, plan, folder, torch_dtype),
            "vae": _build_vae(ckpt, plan, folder),
            "text_encoder": _build_text_encoder(ckpt, plan, torch_dtype),
            "tokenizer": tokenizer,
            "scheduler": _build_scheduler(plan),
        }
    for module in (parts["unet"], parts["vae"], parts["text_encoder"]):
        module.requires_grad_(False)
    return parts
