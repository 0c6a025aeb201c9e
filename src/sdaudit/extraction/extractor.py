"""The extractor: prepared images in, per-layer representations out, one batch at a time."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from ..models.placement import on_device, prompt_conditioning
from ..settings import ExtractionSettings
from .hooks import DeviceToHost
from .protocols import pixels_to_tensor


class Extractor:
    """Runs the denoiser on batches of prepared images and returns the chosen layers' outputs.

    Everything model-specific (encoding, noising under the protocol, the prompt, the hooked pass,
    the layers and their shapes) is asked of the model's family (``model.family``, a
    :class:`~sdaudit.models.families.ModelFamily`); the extractor batches, moves and averages.

    Args:
        model: a :class:`sdaudit.models.LoadedModel`.
        layers: 'all', 'paper', block or layer names (see :meth:`ModelFamily.select_layers`).
        settings: :class:`ExtractionSettings`.
        compile: ``torch.compile`` every hookable layer of the denoiser (in place, once per model; see
            :func:`~sdaudit.models.hooks.compile_layers`). Pays on GPUs for long runs; the first
            batches are slow while it compiles.
        channels_last: put the denoiser in channels-last memory format (in place), which tensor-core
            convolutions prefer. Off by default: on the CPU it changes float rounding.

    On CUDA, captured outputs are copied to pinned host memory on a side stream while the forward pass
    goes on (:class:`~sdaudit.extraction.hooks.DeviceToHost`), or stay on the GPU with
    ``run(..., device_output=True)``. A batch that runs out of GPU memory is split in halves and
    retried (protocol 'clean' only: under 'paper' the batch is part of the result), and later batches
    keep to the size that fitted. On the CPU none of this applies and the path is unchanged.
    """

    def __init__(self, model, layers: str | Sequence[str] = "paper", settings: ExtractionSettings | None = None, *,
                 compile: bool = False, channels_last: bool = False):
        self.model, self.family = model, model.family
        self.settings = (settings or ExtractionSettings()).for_model(model.default_size).validated()
        self.available = self.family.layer_names()
        self.layers = self.family.select_layers(layers)
        infos = {i.name: i for i in self.family.layer_infos(self.settings.input_size)}
        self.shapes = {n: (infos[n].channels, infos[n].height, infos[n].width) for n in self.layers}
        # encoded once per model, prompt and protocol: every extractor of an audit shares it (models.placement)
        self._context = prompt_conditioning(model, self.settings.prompt, self.settings.protocol)
        self.max_batch: int | None = None  # set after an out-of-memory split: the batch size that fitted
        if channels_last:
            model.denoiser.to(memory_format=torch.channels_last)
        if compile:
            self.family.compile_layers(model, self.available)

    def _denoiser_pass(self, sample: torch.Tensor, device_output: bool = False) -> dict[str, torch.Tensor]:
        model, out = self.model, {}
        copier = None
        if device_output:
            def sink(name, tensor):
                out[name] = tensor.detach()
        elif sample.device.type == "cuda":
            sink = copier = DeviceToHost(sample.device)
        else:
            def sink(name, tensor):
                out[name] = tensor.detach().float().cpu()

        # inference mode (no autograd bookkeeping at all) is a few percent faster than no_grad; the outputs are
        # copied out of it below, so that callers get ordinary tensors (usable with autograd, e.g. to train probes)
        with torch.inference_mode():
            self.family.run_denoiser(model, sample, self.settings.timestep, self._context, layers=self.layers, sink=sink)
        if copier is not None:
            return copier.collect()
        return {name: out.pop(name).clone() for name in list(out)}

    @torch.no_grad()
    def run(self, images: Sequence, indices: Sequence[int], *, device_output: bool = False) -> dict[str, torch.Tensor]:
        """Representations {layer: (B, C, h, w) float32 CPU tensor} of prepared ``size`` x ``size`` images.

        ``indices`` are the images' positions in the dataset/store: the clean protocol seeds each
        image's noise by them, so a result never depends on the batch an image falls in.
        ``device_output``: leave the tensors on the model's device, in the model's dtype (for
        consumers that work there, like the audit's accumulators on a GPU).
        """
        if len(images) != len(indices):
            raise ValueError("one index per image is needed")
        splittable = self.settings.protocol != "paper" and len(images) > 1
        if self.max_batch is not None and len(images) > self.max_batch and splittable:
            return self._run_split(images, indices, self.max_batch, device_output)
        oom = getattr(torch.cuda, "OutOfMemoryError", None)
        if oom is None or self.model.device.type != "cuda":
            return self._run(images, indices, device_output)
        try:
            return self._run(images, indices, device_output)
        except oom as error:
            if not splittable:
                raise oom(f"CUDA out of memory with {len(images)} image(s) per pass"
                          + ("; under protocol 'paper' the batch size is part of the result, so the batch is not "
                             "split: choose a smaller batch size" if len(images) > 1 else "") + f" ({error})") from None
        # out of the except block, so that the failed pass's tensors are freed before retrying
        torch.cuda.empty_cache()
        self.max_batch = max(1, len(images) // 2)
        warnings.warn(f"CUDA out of memory with {len(images)} images per pass; going on with {self.max_batch}",
                      RuntimeWarning, stacklevel=2)
        return self._run_split(images, indices, self.max_batch, device_output)

    def _run_split(self, images, indices, size: int, device_output: bool) -> dict[str, torch.Tensor]:
        parts = [self.run(images[s:s + size], indices[s:s + size], device_output=device_output)
                 for s in range(0, len(images), size)]
        return {n: torch.cat([p[n] for p in parts]) for n in self.layers}

    def _run(self, images, indices, device_output: bool) -> dict[str, torch.Tensor]:
        pixels = pixels_to_tensor(images, self.settings.protocol)
        expected = (self.settings.input_size, self.settings.input_size)
        if tuple(pixels.shape[-2:]) != expected:
            raise ValueError(f"images must be prepared to {expected} px, got {tuple(pixels.shape[-2:])}")
        total: dict[str, torch.Tensor] = {}
        with torch.inference_mode(), on_device(self.model, ("vae",)):  # an offloaded VAE visits the device
            inputs = self.family.noised_inputs(self.model, pixels, indices, self.settings)
        for sample in inputs:
            for name, value in self._denoiser_pass(sample, device_output).items():
                if len(inputs) > 1:
                    value = value.float()
                total[name] = value if name not in total else total[name] + value
        if len(inputs) > 1:
            total = {k: v / len(inputs) for k, v in total.items()}
        return {n: total[n] for n in self.layers}


def auto_batch_size(extractor: Extractor, *, fraction: float = 0.8, max_batch: int = 256, default: int = 4,
                    device_output: bool = False) -> int:
    """Images per pass that fill about ``fraction`` of the free GPU memory; ``default`` off CUDA.

    Measures the peak memory of a 1-image and a 2-image pass (their difference is the cost of one
    more image, the rest is fixed) and divides the free memory by it. Out-of-memory errors that
    remain are handled by :meth:`Extractor.run`, which halves the batch. Under protocol 'paper' the
    batch size changes the result, so there it returns ``default``.
    """
    device = extractor.model.device
    if device.type != "cuda" or extractor.settings.protocol == "paper":
        return default
    from PIL import Image

    size = extractor.settings.input_size
    images = [Image.new("RGB", (size, size), (128, 120, 110)) for _ in range(2)]
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    peaks = []
    for b in (1, 2):
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = extractor.run(images[:b], list(range(b)), device_output=device_output)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
        del out
    per_image = max(peaks[1] - peaks[0], 1)
    fixed = max(peaks[0] - per_image, 0)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(max_batch, (free * fraction - fixed) // per_image)))
