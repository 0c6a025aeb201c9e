"""The model-family seam: what sdaudit needs to know about one kind of latent-diffusion model.

A family answers two kinds of questions. Structural ones need only the denoiser's config (no
weights): which layers can be hooked, which of them form the paper's set, which layer the anomaly
analyses look at, and each layer's output shape at an input size. Computational ones run on a
loaded model's components (a :class:`~sdaudit.models.LoadedModel`): encode images to latents, add
noise at timestep t under a protocol, condition on a prompt, run the denoiser with hooks, and turn
a captured output into an (N, C, rows, cols) grid.

Code outside ``sdaudit.models`` and ``sdaudit.extraction`` asks the family (``model.family``)
and never which family it is. The SD-1.x/2.x U-Net (:class:`~sdaudit.models.families.unet.UNetFamily`)
is the first implementation, SDXL (:class:`~sdaudit.models.families.sdxl.SDXLFamily`) the second; diffusion
transformers are meant to be the next.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence

import torch

from ...layer_names import LayerInfo, select_layers

#: ``sink(layer name, (N, C, rows, cols) tensor)``: where :meth:`ModelFamily.run_denoiser` puts each output.
Sink = Callable[[str, torch.Tensor], None]


class ModelFamily(ABC):
    """One kind of latent-diffusion model (SD U-Net, SDXL U-Net, MMDiT, ...), described by its denoiser config."""

    #: short family name, recorded with results
    name: str = ""
    #: the denoiser's diffusers component name ("unet" or "transformer") and the family's pipeline class
    denoiser_component: str = "unet"
    pipeline_class: str = ""
    #: the layer the paper's anomaly analyses (labels, norm maps) use in this family
    anomaly_layer: str = ""

    # ---- structure: the denoiser config is enough ---------------------------------------------

    @classmethod
    @abstractmethod
    def accepts(cls, config) -> bool:
        """Whether a denoiser config (a mapping, or a diffusers ``FrozenDict``) is of this family."""

    @abstractmethod
    def layer_names(self) -> list[str]:
        """Every hookable layer, in execution order."""

    @abstractmethod
    def paper_layers(self) -> list[str]:
        """The paper's layer set (the layers its figures show), in execution order."""

    @abstractmethod
    def layer_infos(self, size: int) -> list[LayerInfo]:
        """Name, block, kind, channels and token grid of every layer for ``size`` x ``size`` pixel input."""

    def select_layers(self, spec: str | Iterable[str]) -> list[str]:
        """Resolve 'all', 'paper', block or layer names against this family's layers (see
        :func:`sdaudit.layer_names.select_layers`)."""
        return select_layers(spec, self.layer_names(), paper=self.paper_layers())

    def semantic_layers(self, layers: Sequence[str]) -> list[str]:
        """Among ``layers``, those where the paper finds the most semantic features (the report's "semantic
        similarity" example picks the least positional of them); here: the second half of the network."""
        layers = list(layers)
        return layers[len(layers) // 2:]

    def default_anomaly_layer(self, layers: Sequence[str]) -> str:
        """The layer anomalies are detected on when the user names none, among the audited ``layers``:
        the family's :attr:`anomaly_layer` when audited, else the family's fallback (here: the middle layer)."""
        return self.anomaly_layer if self.anomaly_layer in layers else list(layers)[len(layers) // 2]

    # ---- computation: on a loaded model's components ------------------------------------------

    @abstractmethod
    def noised_inputs(self, model, pixels: torch.Tensor, indices: Sequence[int], settings) -> list[torch.Tensor]:
        """The denoiser's inputs for a batch of pixels: encoded, noised at ``settings.timestep`` under
        ``settings.protocol``; one tensor per noise sample."""

    @abstractmethod
    def encode_prompt(self, model, prompt: str, *, protocol: str = "clean"):
        """The conditioning of one prompt (batch of 1), in the model's dtype, under ``protocol``; callers pass
        it on to :meth:`run_denoiser` unopened (a tensor for SD-1.x/2.x, a richer object for other families)."""

    @abstractmethod
    def run_denoiser(self, model, sample: torch.Tensor, timestep: int, context, *,
                     layers: Sequence[str], sink: Sink) -> None:
        """One denoiser pass on ``sample`` that hands every layer in ``layers`` to ``sink`` as a grid
        (:meth:`to_grid`) and stops after the last of them."""

    @abstractmethod
    def to_grid(self, name: str, output) -> torch.Tensor:
        """A captured module output as an (N, C, rows, cols) tensor."""

    @abstractmethod
    def compile_layers(self, model, names: Sequence[str]) -> int:
        """``torch.compile`` the named layers of the denoiser in place; how many were new."""

