"""What the diffusion-transformer families (SD3 / SD3.5, FLUX.1) share: one home for their common structure.

Both are a diffusers transformer whose hookable layers are an input embedding, a list of double-stream
(joint, MMDiT) ``transformer_blocks`` (the published helper's layer set), possibly more blocks, and
``norm_out``. Every layer is a token sequence (N, L, C) that becomes an (N, C, rows, cols) grid of
rows = H / :attr:`~TransformerFamily.pixel_multiple` and cols = W / that, where a token covers
``patch`` x ``patch`` latents. Channels come from one forward pass of the config's transformer on the
meta device (no weights, nothing computed), cached per config: they do not depend on the input size.

A family subclass says what differs: its diffusers class and the config keys that identify it, its
layer names, how many latents a token covers (:attr:`~TransformerFamily.patch`), the meta pass's inputs
and which part of a layer's output holds the image tokens.
"""

from __future__ import annotations

import functools
import json
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence

import torch

from ...layer_names import LayerError, LayerInfo, block_of, kind_of
from ..hooks import capture_layers, compile_layers, run_until_captured
from .base import ModelFamily, Sink

BLOCKS = "transformer_blocks"
META_SIDE = 2  # token rows and columns of the meta-device channel pass (channels do not depend on it)


def config_key(config: Mapping) -> str:
    """A config as canonical JSON without diffusers' private ``_`` keys: the cache key of its skeleton."""
    return json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, sort_keys=True, default=str)


@functools.lru_cache(maxsize=16)
def skeleton(class_name: str, key: str) -> torch.nn.Module:
    """The diffusers transformer ``class_name`` of a config (:func:`config_key`) on the meta device: structure
    and shapes, no memory, no weights."""
    import diffusers

    with torch.device("meta"):
        return getattr(diffusers, class_name).from_config(json.loads(key))


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
    """(N, rows * cols, C) image tokens as (N, C, rows, cols); a square grid when ``grid`` is None."""
    n, count, channels = tokens.shape
    if grid is None:
        grid = (int(round(count ** 0.5)),) * 2
    if grid[0] * grid[1] != count:
        raise ValueError(f"{count} image tokens do not make a {grid[0]} x {grid[1]} grid")
    return tokens.reshape(n, grid[0], grid[1], channels).permute(0, 3, 1, 2)


def run_hooked(model, layers: Sequence[str], hook: Callable[[str, object], None], kwargs: Mapping) -> None:
    """One pass of the loaded model's denoiser on ``kwargs`` that hands each of ``layers`` to ``hook`` and stops
    after the last of them."""
    with capture_layers(model.denoiser, layers, hook):
        run_until_captured(lambda: model.denoiser(**kwargs))


class TransformerFamily(ModelFamily):
    """A diffusion-transformer family: structure from the config's meta-device skeleton, token grids.

    Args:
        config: the transformer's config (``transformer/config.json`` as a mapping).
        vae_scale_factor: pixels per latent value (8).
    """

    denoiser_component = "transformer"
    #: the diffusers transformer class, and the config keys that only it (among the families' classes) has
    transformer_class: str = ""
    required_keys: frozenset[str] = frozenset()
    #: latents per token side (SD3: its patch size; FLUX: the 2x2 packing)
    patch: int = 2

    def __init__(self, config: Mapping, vae_scale_factor: int = 8):
        self.config_key = config_key(config)
        self.vae_scale_factor = int(vae_scale_factor)

    @classmethod
    def accepts(cls, config) -> bool:
        """A config with the family's keys (and its class name where the config records one: other transformers,
        such as FLUX.2's or an SD3 ControlNet's, have the same keys)."""
        config = dict(config)
        named = config.get("_class_name", cls.transformer_class)
        return cls.required_keys <= set(config) and named == cls.transformer_class

    def skeleton(self) -> torch.nn.Module:
        """This config's transformer on the meta device (cached: :func:`skeleton`)."""
        return skeleton(self.transformer_class, self.config_key)

    def paper_layers(self) -> list[str]:
        """The published helper's layers: the double-stream (joint) ``transformer_blocks``."""
        return [n for n in self.layer_names() if block_of(n) == BLOCKS]

    @property
    def pixel_multiple(self) -> int:
        """Pixels per token side: the VAE factor times :attr:`patch` (16 px for SD3 and FLUX.1)."""
        return self.vae_scale_factor * self.patch

    def multiple_why(self) -> str:
        """Why sizes must be multiples of :attr:`pixel_multiple`, in the family's terms (for error messages)."""
        return f"VAE factor {self.vae_scale_factor} x {self.patch} latents per token"

    def check_side(self, side: int) -> None:
        """A :class:`LayerError` unless ``side`` px is a positive multiple of :attr:`pixel_multiple`."""
        if side % self.pixel_multiple or side < self.pixel_multiple:
            raise LayerError(f"size {side} px is not a positive multiple of {self.pixel_multiple} "
                             f"({self.multiple_why()})")

    def token_grid(self, height_px: int, width_px: int) -> tuple[int, int]:
        """The (rows, cols) token grid of an input, or a :class:`LayerError` for a size the model cannot take."""
        for side in (height_px, width_px):
            self.check_side(side)
        return height_px // self.pixel_multiple, width_px // self.pixel_multiple

    def layer_infos(self, size: int) -> list[LayerInfo]:
        """Channels from the cached meta-device pass; the token grid from the size."""
        rows, cols = self.token_grid(size, size)
        channels = _layer_channels(type(self), self.config_key)
        return [LayerInfo(n, block_of(n), kind_of(n), channels[n], rows, cols) for n in self.layer_names()]

    @abstractmethod
    def meta_inputs(self, config, side: int) -> tuple[dict, int]:
        """The keyword arguments of a meta-device pass on a ``side`` x ``side`` token grid, and its text-token count."""

    def image_tokens(self, name: str, output, text_tokens: int | None) -> torch.Tensor:
        """The (N, tokens, C) image tokens of a layer's output: the image stream of a (text, image) pair, else
        the output itself."""
        return output[1] if isinstance(output, (tuple, list)) else output

    def to_grid(self, name: str, output, *, grid: tuple[int, int] | None = None,
                text_tokens: int | None = None) -> torch.Tensor:
        """A layer's image tokens (:meth:`image_tokens`) as an (N, C, rows, cols) grid, square without ``grid``."""
        return tokens_to_grid(self.image_tokens(name, output, text_tokens), grid)

    def hook_for(self, sink: Sink, grid: tuple[int, int], text_tokens: int | None = None):
        """A capture hook that hands each layer's output to ``sink`` as a ``grid`` (rows, cols) of image tokens."""
        return lambda name, output: sink(name, self.to_grid(name, output, grid=grid, text_tokens=text_tokens))

    def compile_layers(self, model, names: Sequence[str]) -> int:
        return compile_layers(model.denoiser, names)


@functools.lru_cache(maxsize=16)
def _layer_channels(family: type[TransformerFamily], key: str) -> dict[str, int]:
    """Each layer's channels from one meta-device pass on a :data:`META_SIDE` x :data:`META_SIDE` token grid."""
    self = family(json.loads(key))
    model = self.skeleton()
    kwargs, text_tokens = self.meta_inputs(model.config, META_SIDE)
    channels: dict[str, int] = {}

    def sink(name, output):
        channels[name] = int(self.image_tokens(name, output, text_tokens).shape[-1])

    with torch.no_grad(), capture_layers(model, self.layer_names(), sink):
        run_until_captured(lambda: model(**kwargs))
    return channels


__all__ = ["BLOCKS", "TransformerFamily", "config_key", "run_hooked", "skeleton", "tokens_to_grid"]
