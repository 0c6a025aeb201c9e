"""Known models and the parsing of a user's model specification.

A model spec is one string, as typed on the command line:

* a registry name in any usual spelling (``sd15``, ``SD1.5``, ``sd-1.5``, ``SD-Turbo``, ``sdturbo``);
* ``tiny``: a deterministic, randomly initialised model with SD-1.5's block layout and tiny channels;
  ``tiny-sdxl`` the same with SDXL's layout (two text encoders, added time ids);
* ``arch:sd15`` / ``arch:sd21`` / ``arch:sdxl``: the full-size architecture from a bundled config, random weights;
* a path to a local diffusers folder (with ``unet/`` or ``transformer/``, and ``vae/``), or to one ``.safetensors`` /
  ``.ckpt`` file in the original Stable Diffusion layout;
* any other Hugging Face repo id (``owner/name``) of a diffusers Stable Diffusion pipeline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import SdauditError, UsageError
from ..validation import did_you_mean
from .unet_file import LIGHTNING_REPO, LIGHTNING_STEPS, lightning_file

#: bundled full-size architectures (``arch:<name>``, configs in ``configs/<name>/``) -> default size in px
ARCH_CONFIGS = {"sd15": 512, "sd21": 512, "sdxl": 1024, "sd3": 1024, "sd35-medium": 1024, "flux": 1024,
                "flux-schnell": 1024}
# squashed spelling -> built-in tiny model
TINY_NAMES = {"tiny": "tiny", "tinysdxl": "tiny-sdxl", "tinysd3": "tiny-sd3", "tinyflux": "tiny-flux"}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
#: (name, source, description, default size) of the models that need no download (``sdaudit models`` lists them).
OFFLINE_MODELS = (
    ("tiny", "built in", "SD-1.5 block layout, tiny channels, deterministic random weights", 256),
    ("arch:sd15", "bundled config", "SD-1.5 architecture, random weights", 512),
    ("arch:sd21", "bundled config", "SD-2.1 architecture, random weights", 512),
    ("tiny-sdxl", "built in", "SDXL layout (two text encoders, added time ids), tiny channels, random weights", 256),
    ("arch:sdxl", "bundled config", "SDXL base 1.0 architecture (two text encoders), random weights", 1024),
    ("tiny-sd3", "built in", "SD3 MMDiT layout (24 joint blocks, two CLIP encoders, no T5), tiny widths, random weights", 256),
    ("arch:sd3", "bundled config", "SD3-medium architecture (without T5-XXL), random weights", 1024),
    ("arch:sd35-medium", "bundled config", "SD3.5-medium architecture (without T5-XXL), random weights", 1024),
    ("tiny-flux", "built in", "FLUX.1-dev layout (double + single blocks, CLIP + T5, guidance), tiny widths", 256),
    ("arch:flux", "bundled config", "FLUX.1-dev architecture, random weights (built on a GPU only)", 1024),
    ("arch:flux-schnell", "bundled config", "FLUX.1-schnell architecture, random weights (built on a GPU only)", 1024),
)


class ModelSpecError(UsageError):
    """The model spec names nothing sdaudit knows how to load."""


class ModelNotAvailableError(SdauditError, RuntimeError):
    """The model's weights (or a file they need, such as the tokenizer) are not on this machine and cannot be fetched."""


@dataclass(frozen=True)
class RegistryEntry:
    """A well-known model: its Hugging Face repo and how the paper ran it."""

    key: str
    repo_id: str
    default_size: int  # pixels, square; the paper ran every SD-1/2 model at 512
    arch: str | None  # bundled config of the same architecture, for offline layer listings
    description: str
    aliases: tuple[str, ...] = ()
    base: str | None = None  # the pipeline whose U-Net ``unet_file`` replaces (repo_id then holds only such files)
    unet_file: str | None = None  # a file of U-Net weights in repo_id (models.unet_file)


REGISTRY: dict[str, RegistryEntry] = {
    e.key: e
    for e in [
        RegistryEntry("sd14", "CompVis/stable-diffusion-v1-4", 512, "sd15", "Stable Diffusion 1.4", ("stablediffusion14",)),
        RegistryEntry("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", 512, "sd15", "Stable Diffusion 1.5",
                      ("stablediffusion15", "runwayml/stable-diffusion-v1-5")),
        RegistryEntry("sd20", "stabilityai/stable-diffusion-2", 512, "sd21", "Stable Diffusion 2.0 (768 px v-prediction)",
                      ("stablediffusion20", "sd2")),
        RegistryEntry("sd21", "stabilityai/stable-diffusion-2-1", 512, "sd21",
                      "Stable Diffusion 2.1 (768 px v-prediction model, run at 512 px as in the paper)",
                      ("stablediffusion21",)),
        RegistryEntry("sd-turbo", "stabilityai/sd-turbo", 512, "sd21", "SD-Turbo (SD-2.1 architecture, 512 px)",
                      ("sdturbo",)),
        RegistryEntry("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", 1024, "sdxl", "Stable Diffusion XL base 1.0",
                      ("sdxlbase", "sdxlbase10")),
        RegistryEntry("sdxl-turbo", "stabilityai/sdxl-turbo", 512, "sdxl", "SDXL-Turbo", ("sdxlturbo",)),
        *(RegistryEntry(f"sdxl-lightning-{n}step", LIGHTNING_REPO, 1024, "sdxl",
                        f"SDXL-Lightning {n}-step (its U-Net weights over SDXL base 1.0)", (f"sdxllightning{n}",),
                        base="stabilityai/stable-diffusion-xl-base-1.0", unet_file=lightning_file(n))
          for n in LIGHTNING_STEPS),
        RegistryEntry("sd3", "stabilityai/stable-diffusion-3-medium-diffusers", 1024, "sd3", "Stable Diffusion 3 medium",
                      ("sd3medium", "stablediffusion3")),
        RegistryEntry("sd35-medium", "stabilityai/stable-diffusion-3.5-medium", 1024, "sd35-medium",
                      "Stable Diffusion 3.5 medium", ("sd35m", "stablediffusion35medium")),
        RegistryEntry("sd35-large", "stabilityai/stable-diffusion-3.5-large", 1024, None, "Stable Diffusion 3.5 large",
                      ("stablediffusion35large",)),
        RegistryEntry("flux-dev", "black-forest-labs/FLUX.1-dev", 1024, "flux", "FLUX.1-dev", ("flux1dev",)),
        RegistryEntry("flux-schnell", "black-forest-labs/FLUX.1-schnell", 1024, "flux-schnell", "FLUX.1-schnell",
                      ("flux1schnell",)),
    ]
}


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: what kind of source, and where it is."""

    kind: str  # "tiny" (tiny, tiny-sdxl) | "arch" | "hub" | "folder" | "file"
    name: str  # canonical name shown to users and recorded in manifests
    location: str  # repo id, path or bundled config name
    entry: RegistryEntry | None = None

    @property
    def default_size(self) -> int:
        if self.entry is not None:
            return self.entry.default_size
        if self.kind == "tiny":
            return 256
        if self.kind == "arch":
            return ARCH_CONFIGS[self.location]
        return 512


def _squash(text: str) -> str:
    """Lower-case and drop separators, so that 'SD-1.5', 'sd_15' and 'SD 1.5' compare equal."""
    return re.sub(r"[\s._\-]", "", text).lower()


_ALIASES: dict[str, RegistryEntry] = {}
for _entry in REGISTRY.values():
    for _alias in (_entry.key, _entry.repo_id, *_entry.aliases):
        _ALIASES[_squash(_alias)] = _entry
#: repo ids that hold the weights of several entries (SDXL-Lightning's step files): the user must pick one
_SHARED_REPOS: dict[str, list[str]] = {}
for _entry in REGISTRY.values():
    if _entry.unet_file is not None:
        _SHARED_REPOS.setdefault(_squash(_entry.repo_id), []).append(_entry.key)
        _ALIASES.pop(_squash(_entry.repo_id), None)


def known_model_names() -> list[str]:
    """Every name accepted besides paths and repo ids, for help texts and errors."""
    return ["tiny", *(f"arch:{a}" for a in ARCH_CONFIGS), "tiny-sdxl", "tiny-sd3", "tiny-flux", *REGISTRY]


def parse_model_spec(spec: str) -> ModelSpec:
    """Turn a user's model string into a :class:`ModelSpec`; raise :class:`ModelSpecError` if unknown."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError("empty model name; known models: " + ", ".join(known_model_names()))
    spec = spec.strip()
    tiny = TINY_NAMES.get(_squash(spec))
    if tiny is not None:
        return ModelSpec("tiny", tiny, tiny)
    if spec.lower().startswith("arch:"):
        arch = _squash(spec[5:])
        arch = {"sd1": "sd15", "sd2": "sd21", "sd14": "sd15", "sd20": "sd21", "sdturbo": "sd21",
                "sdxlbase": "sdxl", "sdxlbase10": "sdxl", "sdxlturbo": "sdxl", "sd3medium": "sd3",
                "sd35medium": "sd35-medium", "fluxdev": "flux", "flux1dev": "flux", "fluxschnell": "flux-schnell",
                "flux1schnell": "flux-schnell"}.get(arch, arch)
        if arch not in ARCH_CONFIGS:
            archs = [f"arch:{a}" for a in ARCH_CONFIGS]
            raise ModelSpecError(f"unknown architecture '{spec}'{did_you_mean(spec, archs)}; choose one of: "
                                 + ", ".join(archs))
        return ModelSpec("arch", f"arch:{arch}", arch)
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir():
            if not ((path / "unet").is_dir() or (path / "transformer").is_dir()):
                raise ModelSpecError(f"'{spec}' is a folder but not a diffusers pipeline folder: it has no 'unet' "
                                     "(or 'transformer') subfolder")
            return ModelSpec("folder", str(path.resolve()), str(path.resolve()))
        if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            return ModelSpec("file", str(path.resolve()), str(path.resolve()))
        raise ModelSpecError(f"'{spec}' is a file but not a checkpoint (expected one of {', '.join(SINGLE_FILE_SUFFIXES)})")
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES or spec.startswith((".", "/", "~")):
        raise ModelSpecError(f"model file or folder '{spec}' does not exist")
    if _squash(spec) in _SHARED_REPOS:
        raise ModelSpecError(f"'{spec}' holds several models; choose one of: {', '.join(_SHARED_REPOS[_squash(spec)])}")
    entry = _ALIASES.get(_squash(spec))
    if entry is not None:
        return ModelSpec("hub", entry.key, entry.repo_id, entry)
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", spec):
        return ModelSpec("hub", spec, spec)
    raise ModelSpecError(f"unknown model '{spec}'{did_you_mean(spec, known_model_names())}; known models: "
                         f"{', '.join(known_model_names())} ('sdaudit models' describes them); "
                         "or give a Hugging Face repo id (owner/name), a diffusers folder, or a .safetensors/.ckpt file")
