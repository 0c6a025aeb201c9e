"""The settings tree: what decides the representations (:class:`ExtractionSettings`) inside what an audit
measures (:class:`AuditSettings`). Torch-free, immutable, spelled here only.

Every other place derives from these dataclasses: the store's configuration (``store_config`` in
:mod:`sdaudit.extraction.run`) is ``ExtractionSettings.to_dict()`` plus the store's own fields, the
audit's checkpoint fingerprint and results.json's ``"settings"`` are ``AuditSettings.to_dict()``, and
``extract()`` / the CLI build the objects from the same field names. ``to_dict()`` is flat (the field
names are unique across the tree), so readers of results.json find ``settings["protocol"]`` as before;
``from_dict()`` inverts it.

``validated()`` returns a new, checked copy (``dataclasses.replace``): a settings object is never
changed after it is made, so one object can be reused for several models or audits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields, replace

from .constants import PAPER_SEED, PAPER_TIMESTEP, PAPER_TRAIN_FRACTION, RESOLUTIONS, VIEWS
from .errors import UsageError
from .validation import check_choices, check_seed, check_size, did_you_mean

PROTOCOLS = ("clean", "paper")
LATENT_MODES = ("mean", "sample")
ANALYSES = ("position", "borders", "anomalies", "maps", "channels", "correspondence")
# what an audit runs unless told: "channels" (massive channels, sdaudit.analyses.channels) and "correspondence"
# (matching to known views, sdaudit.analyses.correspondence) are opt-in, so the default outputs stay as they were
DEFAULT_ANALYSES = ("position", "borders", "anomalies", "maps")
PROBES = ("lda", "ridge", "paper")
CONTROLS = ("untrained", "circular-padding")
# --mitigations: sdaudit.mitigations.REGISTRY's names (spelled here so that the settings stay light to import)
MITIGATIONS = ("position", "position-subspace", "anomalies", "channels", "border")


def check_protocol(protocol: str, latent: str | None) -> str:
    """Validate the protocol and return the latent mode it uses ('paper' always samples; 'clean' defaults
    to the posterior mean)."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol '{protocol}'{did_you_mean(protocol, PROTOCOLS)}; choose one of: "
                         f"{', '.join(PROTOCOLS)}")
    if protocol == "paper":
        if latent not in (None, "sample"):
            raise UsageError("protocol 'paper' samples the VAE posterior; --latent cannot be changed")
        return "sample"
    latent = latent or "mean"
    if latent not in LATENT_MODES:
        raise UsageError(f"unknown latent mode '{latent}'; choose one of: {', '.join(LATENT_MODES)}")
    return latent


def check_batch_size(batch_size: int, protocol: str) -> int:
    """``batch_size`` if valid: >= 1 images per pass, or 0 for "as many as fit"
    (:func:`~sdaudit.extraction.extractor.auto_batch_size`).

    0 is refused under protocol 'paper', where the batch size is part of the result.
    """
    if batch_size < 0 or (batch_size == 0 and protocol == "paper"):
        raise UsageError(f"batch_size {batch_size}: give >= 1 images per U-Net pass, or 0 (as many as fit in GPU "
                         "memory) under protocol 'clean' (under 'paper' the batch size changes the result)")
    return batch_size


@dataclass(frozen=True)
class ExtractionSettings:
    """Everything besides the model, the layers and the images that decides the representations.

    Attributes:
        protocol: 'clean' (default) or 'paper' (see :mod:`sdaudit.extraction.protocols`).
        timestep: diffusion timestep t in [0, 999] at which the latents are noised.
        seed: base seed of every random draw.
        size: side in pixels of the square model input (a multiple of 64 for SD); None: the model's own
            size (:meth:`for_model` fills it in before extracting).
        prompt: text prompt; '' is the paper's empty prompt.
        latent: 'mean' or 'sample' of the VAE posterior ('paper' always samples); None: the protocol's.
        noise_samples: noise draws averaged per image ('clean' only).
        crop_px: pixels cropped from each side of the prepared ``size`` px image; the crop is
            extracted at its own size, ``input_size = size - 2 * crop_px`` (the border experiment's
            second pass, as published: no resize, so a layer's grid shrinks by 2 crop_px / (size / n)
            tokens and aligns token for token with the full image's interior); 0 for none.
    """

    protocol: str = "clean"
    timestep: int = PAPER_TIMESTEP
    seed: int = PAPER_SEED
    size: int | None = None
    prompt: str = ""
    latent: str | None = None
    noise_samples: int = 1
    crop_px: int = 0

    def validated(self) -> ExtractionSettings:
        """A checked copy, with ``latent`` resolved to the protocol's mode and the numbers as ints."""
        latent = check_protocol(self.protocol, self.latent)
        if not 0 <= int(self.timestep) <= 999:
            raise UsageError(f"timestep {self.timestep} is outside [0, 999]")
        if self.noise_samples < 1 or (self.protocol == "paper" and self.noise_samples != 1):
            raise UsageError("noise_samples must be >= 1, and 1 under protocol 'paper'")
        if self.size is not None:  # None: the model's size; 0 must not silently mean that too
            check_size(self.size)
        check_seed(self.seed)
        if self.crop_px < 0 or (self.size is not None and self.crop_px >= self.size // 2):
            raise UsageError(f"crop_px {self.crop_px} must be in [0, size/2)")
        return replace(self, timestep=int(self.timestep), seed=int(self.seed), latent=latent,
                       size=None if self.size is None else int(self.size), noise_samples=int(self.noise_samples),
                       crop_px=int(self.crop_px))

    def for_model(self, default_size: int) -> ExtractionSettings:
        """A copy with ``size`` filled in (the model's ``default_size`` where none was asked for)."""
        return self if self.size is not None else replace(self, size=int(default_size))

    @property
    def input_size(self) -> int:
        """Side in pixels of what the U-Net's VAE sees: the prepared image less the crop."""
        if self.size is None:
            raise UsageError("ExtractionSettings.size is not set: use settings.for_model(model.default_size)")
        return self.size - 2 * self.crop_px

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> ExtractionSettings:
        """The settings recorded in ``data`` (a store configuration, results.json settings); other keys ignored."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


EXTRACTION_FIELDS = tuple(f.name for f in fields(ExtractionSettings))


@dataclass(frozen=True)
class DetectorSettings:
    """The anomaly detector's thresholds (see :class:`~sdaudit.analyses.AnomalyDetector`)."""

    z_threshold: float = 3.5
    ratio_threshold: float = 2.0
    max_tokens: int | None = None
    local_ratio: float | None = None

    def kwargs(self) -> dict:
        """The keyword arguments of ``AnomalyDetector`` (unset ones keep the detector's defaults)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def _default(f) -> object:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def _frozen(name: str, value):
    """A field value in the immutable form the tree keeps: lists as tuples, the detector as its dataclass."""
    if name == "detector" and isinstance(value, Mapping):
        return DetectorSettings(**value)
    if name in ("timesteps", "resolutions"):
        return tuple(int(v) for v in value)
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return value


@dataclass(frozen=True, init=False)
class AuditSettings:
    """What an audit measures and how: its :class:`ExtractionSettings` plus the audit's own choices.

    Recorded in results.json (:meth:`to_dict`) and hashed into the resume fingerprint. Construct it with
    keywords; the extraction's fields may be given flat (``AuditSettings(size=256, protocol="paper",
    layers="all")``) or as ``extraction=ExtractionSettings(...)``. Lists are kept as tuples.
    """

    extraction: ExtractionSettings = ExtractionSettings()
    layers: str | tuple[str, ...] = "paper"
    analyses: tuple[str, ...] = DEFAULT_ANALYSES
    probe_method: str = "lda"  # "lda" (closed form, default), "ridge", or "paper" (the published trained probe)
    probe_max_tokens: int = 65536  # "paper": training tokens kept per layer (a uniform, order-free sample)
    train_fraction: float = PAPER_TRAIN_FRACTION
    resolutions: tuple[int, ...] = RESOLUTIONS
    detector: DetectorSettings = DetectorSettings()
    anomaly_layer: str | None = None
    anomaly_labels: str | None = None  # 'paper:sd15' etc. or a label file: measure these anomalies' norms
    controls: tuple[str, ...] = ()  # "untrained", "circular-padding": rerun as a control
    control_seed: int = 1  # seed of the untrained control's initialisation (tiny and arch:* are drawn with 0)
    timesteps: tuple[int, ...] = ()  # more than one: one audit, its numbers per timestep
    noise_seeds: int = 1  # K > 1: K independent noise draws per image (seeds seed .. seed+K-1), numbers averaged
    batch_size: int = 4  # images per U-Net pass; 0: as many as fit in GPU memory (4 on the CPU)
    n_show: int = 4
    views: tuple[str, ...] = ("flip",)  # "correspondence": the known views each image is matched to
    keypoints: str | None = None  # a keypoint pair file or folder (sdaudit.keypoint_pairs): PCK per layer on it
    # sdaudit.mitigations names: each fitted on the probe's training images and its effect measured on the others
    # (matching to the views, before and after); implies "correspondence"
    mitigations: tuple[str, ...] = ()

    def __init__(self, extraction: ExtractionSettings | None = None, **values):
        """Keyword fields; those of :class:`ExtractionSettings` are forwarded into ``extraction``."""
        forwarded = {k: values.pop(k) for k in EXTRACTION_FIELDS if k in values}
        own = {f.name: f for f in fields(self) if f.name != "extraction"}
        unknown = sorted(set(values) - set(own))
        if unknown:
            raise TypeError(f"AuditSettings has no setting {', '.join(map(repr, unknown))}")
        object.__setattr__(self, "extraction", replace(extraction or ExtractionSettings(), **forwarded))
        for name, f in own.items():
            object.__setattr__(self, name, _frozen(name, values[name] if name in values else _default(f)))

    def validated(self) -> AuditSettings:
        """A checked copy: extraction settings resolved, the first of ``timesteps`` as the main timestep."""
        self._check_choices()
        timesteps = self._checked_timesteps()
        if self.noise_seeds < 1:
            raise UsageError(f"--noise-seeds must be at least 1, got {self.noise_seeds}")
        check_seed(self.extraction.seed)
        check_seed(self.extraction.seed + self.noise_seeds - 1)
        if self.extraction.crop_px:
            raise UsageError("crop_px is not an audit setting: the audit plans its own cropped passes (the border "
                             "experiment); extract cropped images with extract(..., crop_px=...)")
        if self.noise_seeds > 1 and self.controls:
            raise UsageError("--noise-seeds with --control is not supported yet: run the control with one noise seed")
        extraction = replace(self.extraction, timestep=timesteps[0] if timesteps else self.extraction.timestep)
        extraction = extraction.validated()
        check_batch_size(self.batch_size, extraction.protocol)
        analyses = self.analyses
        if self.mitigations and "correspondence" not in analyses:  # mitigations are measured on its views
            analyses += ("correspondence",)
        if extraction.protocol == "paper" and ("correspondence" in analyses or self.keypoints):
            raise UsageError(
                "the correspondence probe, --mitigations and --keypoints need independent noise for an image and its "
                "view (or a pair's two images), but protocol 'paper' draws one noise tensor per batch, which pulls "
                "matches onto the source position: use --protocol clean")
        return replace(self, extraction=extraction, timesteps=timesteps, analyses=analyses)

    def _check_choices(self) -> None:
        unknown = [a for a in self.analyses if a not in ANALYSES]
        if unknown or not self.analyses:  # none at all would write an empty report
            raise UsageError(f"unknown analyses {list(unknown)}{did_you_mean(unknown[0], ANALYSES)}; choose from "
                             f"{', '.join(ANALYSES)}" if unknown
                             else f"no analyses given; choose one or more of {', '.join(ANALYSES)}")
        if self.extraction.size is not None:  # None: the model's size; 0 must not silently mean that too
            check_size(self.extraction.size)
        if self.probe_method not in PROBES:
            raise UsageError(f"unknown probe '{self.probe_method}'{did_you_mean(self.probe_method, PROBES)}; "
                             f"choose one of {', '.join(PROBES)}")
        if self.probe_max_tokens < 1:
            raise UsageError(f"probe_max_tokens must be at least 1, got {self.probe_max_tokens}")
        unknown = [c for c in self.controls if c not in CONTROLS]
        if unknown:
            raise UsageError(f"unknown control {unknown[0]!r}{did_you_mean(unknown[0], CONTROLS)}; choose from "
                             f"{', '.join(CONTROLS)}")
        if not 0 < self.train_fraction < 1:
            raise UsageError("train_fraction must be in (0, 1)")
        check_choices(list(self.views), VIEWS, name="--views")
        if len(set(self.views)) != len(self.views):
            raise UsageError(f"--views lists a view twice: {list(self.views)}")
        if self.mitigations:
            check_choices(list(self.mitigations), MITIGATIONS, name="--mitigations")
            if len(set(self.mitigations)) != len(self.mitigations):
                raise UsageError(f"--mitigations lists a mitigation twice: {list(self.mitigations)}")

    def _checked_timesteps(self) -> tuple[int, ...]:
        bad = [t for t in [self.extraction.timestep, *self.timesteps] if not 0 <= int(t) <= 999]
        if bad:
            raise UsageError(f"invalid value for '--timestep': {bad[0]} is outside 0..999")
        if len(set(self.timesteps)) != len(self.timesteps):
            raise UsageError(f"--timestep lists a timestep twice: {list(self.timesteps)}")
        return tuple(int(t) for t in self.timesteps)

    # ----- derived settings ------------------------------------------------------------------------
    def for_model(self, default_size: int) -> AuditSettings:
        """A copy with the extraction's size filled in (the model's where none was asked for)."""
        return replace(self, extraction=self.extraction.for_model(default_size))

    def variants(self) -> list[tuple[int, int]]:
        """Every (timestep, seed) the audit runs: the main one first."""
        e = self.extraction
        return [(t, e.seed + k) for t in (self.timesteps or [e.timestep]) for k in range(self.noise_seeds)]

    def single(self, timestep: int | None = None, seed: int | None = None) -> AuditSettings:
        """The settings of one run of the passes: one timestep, one seed, no controls (what its checkpoint
        depends on, so that adding a timestep, a seed or a control later reuses the finished runs)."""
        e = self.extraction
        extraction = replace(e, timestep=e.timestep if timestep is None else int(timestep),
                             seed=e.seed if seed is None else int(seed))
        return replace(self, extraction=extraction, timesteps=(), noise_seeds=1, controls=(), control_seed=1)

    def probe_kwargs(self) -> dict:
        """The position probe accumulator's settings (method, train fraction, resolutions, token cap)."""
        probe = {"train_fraction": self.train_fraction, "method": self.probe_method,
                 "resolutions": list(self.resolutions)}
        if self.probe_method == "paper":
            probe["max_train_tokens"] = self.probe_max_tokens
        return probe

    # ----- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Flat JSON-ready dict: the extraction's fields beside the audit's (tuples as lists)."""
        data = {"layers": self.layers if isinstance(self.layers, str) else list(self.layers)}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extraction":
                data.update(value.to_dict())
            elif f.name == "detector":
                data["detector"] = value.kwargs()
            elif f.name != "layers":
                data[f.name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> AuditSettings:
        """The settings :meth:`to_dict` wrote (results.json's ``"settings"``)."""
        return cls(**dict(data))
