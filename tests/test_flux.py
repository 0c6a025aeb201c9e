"""The FLUX.1 family on the offline ``tiny-flux`` model: layers, extraction shapes, both single-block output forms,
guidance, the flow-matching inputs under both protocols, the store, a whole audit and the explorer."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from sdaudit.cli import app
from sdaudit.extraction import extract
from sdaudit.extraction.extractor import Extractor
from sdaudit.layer_names import LayerError
from sdaudit.models import family_for_config, load_denoiser_config, load_model
from sdaudit.models.families import FluxFamily, flow_noise
from sdaudit.models.families.flux import DEV_GUIDANCE, T5_TOKENS, pack
from sdaudit.models.offline_flux import TINY_FLUX_TRANSFORMER_CONFIG
from sdaudit.settings import ExtractionSettings
from sdaudit.store import open_store
from tests.cli_helpers import layer_table_rows
from tests.test_extraction import run_batched

LAYERS = ["x_embedder", "transformer_blocks[0]", "transformer_blocks[1]", *(f"single_transformer_blocks[{i}]"
                                                                          for i in range(4)), "norm_out"]


@pytest.fixture(scope="module")
def flux():
    return load_model("tiny-flux", device="cpu")


@pytest.fixture(scope="module")
def schnell(flux):
    """tiny-flux without the guidance embedding (a tiny schnell; same other weights)."""
    from diffusers import FluxTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = FluxTransformer2DModel.from_config({**TINY_FLUX_TRANSFORMER_CONFIG, "guidance_embeds": False})
    return dataclasses.replace(flux, denoiser=transformer.eval().requires_grad_(False), family=None)


def _run(model, images, protocol: str, size: int = 64, layers="all", **settings):
    extractor = Extractor(model, layers, ExtractionSettings(size=size, protocol=protocol, **settings))
    return extractor.run(images, list(range(len(images))))


def test_layers_command_matches_a_real_forward_pass(flux, images5):
    result = CliRunner().invoke(app, ["layers", "--model", "tiny-flux", "--size", "64"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "8 layers" in result.output
    rows = layer_table_rows(result.output)
    assert list(rows) == flux.family.layer_names() == LAYERS
    reps = _run(flux, images5[:1], "clean")
    assert {n: (v.shape[1], f"{v.shape[2]}x{v.shape[3]}") for n, v in reps.items()} == rows == \
        {n: (32, "4x4") for n in LAYERS}


def test_family_of_the_flux_config():
    family = family_for_config(load_denoiser_config("tiny-flux"))
    assert isinstance(family, FluxFamily) and family.denoiser_component == "transformer"
    assert family.paper_layers() == ["transformer_blocks[0]", "transformer_blocks[1]"]
    assert [i.kind for i in family.layer_infos(64)] == ["embed", "joint", "joint"] + ["single"] * 4 + ["norm"]
    assert family.layer_infos(96)[0].grid == (6, 6)
    with pytest.raises(LayerError, match="multiple of 16"):
        family.layer_infos(72)
    assert not isinstance(family_for_config(load_denoiser_config("tiny-sdxl")), FluxFamily)
    assert FluxFamily.accepts({**TINY_FLUX_TRANSFORMER_CONFIG, "_class_name": "FluxTransformer2DModel"})
    assert not FluxFamily.accepts({**TINY_FLUX_TRANSFORMER_CONFIG, "_class_name": "Flux2Transformer2DModel"})


@pytest.mark.parametrize("protocol", ["clean", "paper"])
def test_extraction_shapes_under_both_protocols(flux, images5, protocol):
    reps = _run(flux, [im.resize((128, 128)) for im in images5[:3]], protocol, size=128)
    infos = {i.name: i for i in flux.family.layer_infos(128)}
    assert list(reps) == LAYERS
    for name, value in reps.items():
        info = infos[name]
        assert tuple(value.shape) == (3, info.channels, info.height, info.width) == (3, 32, 8, 8), name
        assert torch.isfinite(value).all(), name


def test_clean_protocol_is_independent_of_batch_size(flux, images5):
    extractor = Extractor(flux, "all", ExtractionSettings(size=64))
    one, five = run_batched(extractor, images5, 1), run_batched(extractor, images5, 5)
    for name in LAYERS:
        scale = one[name].abs().max().item()
        assert torch.allclose(one[name], five[name], rtol=0, atol=1e-5 * max(scale, 1.0)), name


def test_both_single_block_output_forms_give_the_same_grid(flux, images5):
    """diffusers >= 0.35 returns (text, image) from a single block, older versions one tensor (text first):
    a hook that turns the output into the old form before sdaudit's capture changes nothing."""
    layer = "single_transformer_blocks[1]"
    new = _run(flux, images5[:2], "clean", layers=[layer])[layer]
    block = flux.transformer.get_submodule("single_transformer_blocks.1")
    handle = block.register_forward_hook(lambda module, args, output: torch.cat(output, dim=1))
    try:
        old = _run(flux, images5[:2], "clean", layers=[layer])[layer]
    finally:
        handle.remove()
    assert torch.equal(new, old)
    text, image = torch.randn(2, 5, 32), torch.randn(2, 12, 32)
    pair = flux.family.to_grid(layer, (text, image), grid=(3, 4))
    single = flux.family.to_grid(layer, torch.cat([text, image], dim=1), grid=(3, 4), text_tokens=5)
    assert torch.equal(pair, single) and pair.shape == (2, 32, 3, 4)
    assert torch.equal(pair[:, :, 1, 2], image[:, 1 * 4 + 2])  # tokens are row-major over the grid
    with pytest.raises(ValueError, match="text-token count"):
        flux.family.to_grid(layer, torch.cat([text, image], dim=1))


def _transformer_calls(model, images, protocol: str, size: int = 64) -> list[dict]:
    calls = []

    def record(module, args, kwargs):
        calls.append({k: kwargs.get(k) for k in ("hidden_states", "timestep", "guidance", "encoder_hidden_states")})

    handle = model.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        _run(model, images, protocol, size=size, layers="x_embedder")
    finally:
        handle.remove()
    return calls


def test_guidance_is_passed_for_dev_and_not_for_schnell(flux, schnell, images5):
    for protocol in ("clean", "paper"):
        dev, = _transformer_calls(flux, images5[:2], protocol)
        assert dev["guidance"].tolist() == [DEV_GUIDANCE] * 2 and dev["guidance"].dtype == torch.float32
        fast, = _transformer_calls(schnell, images5[:2], protocol)
        assert fast["guidance"] is None
    assert schnell.family.guidance is None and flux.family.guidance == DEV_GUIDANCE


def test_prompt_encoding_equals_the_diffusers_pipeline(flux):
    from diffusers import FluxPipeline

    embeds, pooled, text_ids = FluxPipeline(**flux.components()).encode_prompt("a red cube", None, device="cpu")
    context = flux.family.encode_prompt(flux, "a red cube")
    assert context.prompt_embeds.shape == (1, T5_TOKENS, 32) and context.pooled.shape == (1, 32)
    assert torch.equal(context.prompt_embeds, embeds) and torch.equal(context.pooled, pooled)
    assert torch.equal(context.text_ids, text_ids) and not text_ids.any()


def test_clean_inputs_use_the_dynamic_resolution_shift(flux, images5):
    """The transformer sees x_t = (1 - sigma) x_0 + sigma * noise packed into tokens, and the shifted schedule's
    timestep / 1000 for the token count of the size; paper uses the helper's unshifted (t + 1) / 1000."""
    from sdaudit.extraction.protocols import pixels_to_tensor

    for size, tokens in ((64, 16), (128, 64)):
        images = [im.resize((size, size)) for im in images5[:2]]
        call, = _transformer_calls(flux, images, "clean", size=size)
        value, sigma = flow_noise.timestep_and_sigma(flux.scheduler, 50, tokens)
        assert value == pytest.approx(sigma * 1000, rel=1e-6) and sigma > 0.051  # the shift raises sigma
        assert call["timestep"].tolist() == pytest.approx([value / 1000] * 2)
        latents = flow_noise.encode(flux, pixels_to_tensor(images, "clean"))
        expected = flow_noise.noised(latents, flow_noise.clean_noise(latents, [0, 1], seed=42), sigma)
        torch.testing.assert_close(call["hidden_states"], pack(expected)[0])
    paper, = _transformer_calls(flux, images5[:2], "paper")
    assert paper["timestep"].tolist() == pytest.approx([0.051] * 2)


def test_folder_round_trip(flux, tmp_path, images5):
    flux.save_pretrained(tmp_path / "tiny-flux")
    loaded = load_model(str(tmp_path / "tiny-flux"), device="cpu")
    assert isinstance(loaded.family, FluxFamily) and loaded.text_encoder_2 is not None
    assert type(loaded.tokenizer_2).__name__ == type(flux.tokenizer_2).__name__
    a, b = _run(flux, images5[:2], "clean"), _run(loaded, images5[:2], "clean")
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_store_round_trip(flux, tmp_path):
    from tests.conftest import photo_folder

    folder = photo_folder(tmp_path / "images", 3, height=64, widen=0)
    report = extract(flux, folder, tmp_path / "s", layers="all", size=64, batch_size=2, progress=False)
    store = open_store(tmp_path / "s")
    assert report.added == 3 and store.layers == LAYERS
    direct = _run(flux, [im for im in _prepared(folder, 64)], "clean")
    for layer in LAYERS:
        np.testing.assert_allclose(store.read(layer).astype(np.float32), direct[layer].numpy(), rtol=2e-3, atol=2e-3)
    assert store.manifest["config"]["model"]["name"] == "tiny-flux"


def _prepared(folder, size):
    from sdaudit.extraction import prepare_for_model
    from sdaudit.images import load_image

    return [prepare_for_model(load_image(f).image, size) for f in sorted(folder.iterdir())]


def test_a_whole_audit_and_the_explorer_on_tiny_flux(flux, tmp_path):
    """End to end through the family seam: audit, results, report and explorer know no FLUX specifics."""
    from sdaudit.audit import AuditSettings, audit
    from sdaudit.explorer import create_app
    from tests.conftest import photo_folder, random_photo

    folder = photo_folder(tmp_path / "images", 5, height=128)
    results = audit(flux, folder, tmp_path / "out", AuditSettings(size=128), progress=False)
    assert [row["layer"] for row in results["table"]] == flux.family.paper_layers()
    assert results["model"]["name"] == "tiny-flux" and (tmp_path / "out" / "report.html").exists()
    assert any(row.get("probe_acc_8") is not None for row in results["table"])
    extract(flux, folder, tmp_path / "store", layers="all", size=128, progress=False)
    with TestClient(create_app([tmp_path / "store"], model=flux), base_url="http://127.0.0.1") as client:
        info = client.get("/api/info").json()["stores"][0]
        assert info["model"] == "tiny-flux" and info["can_upload"] is True
        assert [layer["name"] for layer in info["layers"]] == LAYERS
        block = next(layer for layer in info["layers"] if layer["name"] == "single_transformer_blocks[2]")
        assert (block["rows"], block["cols"], block["kind"]) == (8, 8, "single")
        layer = "transformer_blocks[1]"
        queries = (("features", {"image": 0}), ("norms", {"images": "0,1"}), ("anomalies", {"images": "0,1"}))
        for endpoint, params in queries:
            r = client.get(f"/api/stores/0/{endpoint}", params={"layer": layer, **params})
            assert r.status_code == 200, (endpoint, r.text)
        upload = io.BytesIO()
        random_photo(99, size=(160, 128)).save(upload, format="PNG")  # extracted by the FLUX model on upload
        r = client.post("/api/stores/0/images?name=new.png", content=upload.getvalue(),
                        headers={"X-Requested-By": "sdaudit"})
        assert r.status_code == 200 and r.json()["added"] is True and r.json()["image"]["index"] == 5, r.text
        assert client.get("/api/stores/0/features", params={"layer": "norm_out", "image": 5}).status_code == 200
