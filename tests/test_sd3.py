"""The SD3 family on the offline ``tiny-sd3`` model: layers, extraction shapes under both protocols, batch
invariance, the conditioning, the flow-matching timestep and sigma, sizes, the folder and store round trips,
and a whole audit with its report and the explorer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sdaudit.cli import app
from sdaudit.extraction.extractor import Extractor
from sdaudit.extraction.protocols import pixels_to_tensor
from sdaudit.layer_names import LayerError
from sdaudit.models import family_for_config, load_denoiser_config, load_model
from sdaudit.models.families import SD3Family
from sdaudit.models.families import flow_noise
from sdaudit.settings import ExtractionSettings
from tests.cli_helpers import layer_table_rows
from tests.test_extraction import run_batched

SD3_NAMES = ["pos_embed", *(f"transformer_blocks[{i}]" for i in range(24)), "norm_out"]


@pytest.fixture(scope="module")
def sd3():
    return load_model("tiny-sd3", device="cpu")


def _run(model, images, protocol: str, size: int = 64, layers="all", **settings):
    extractor = Extractor(model, layers, ExtractionSettings(size=size, protocol=protocol, **settings))
    return extractor.run(images, list(range(len(images))))


def _transformer_calls(model, images, protocol: str, layers="pos_embed", **settings) -> list[dict]:
    """What the transformer was called with (its keyword arguments), one record per pass."""
    calls = []
    handle = model.denoiser.register_forward_pre_hook(lambda module, args, kwargs: calls.append(dict(kwargs)),
                                                      with_kwargs=True)
    try:
        _run(model, images, protocol, layers=layers, **settings)
    finally:
        handle.remove()
    return calls


def test_layers_command_matches_a_real_forward_pass(sd3, images5):
    result = CliRunner().invoke(app, ["layers", "--model", "tiny-sd3", "--size", "64"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "26 layers" in result.output
    rows = layer_table_rows(result.output)
    assert list(rows) == sd3.family.layer_names() == SD3_NAMES
    blocks = sd3.denoiser.transformer_blocks
    assert blocks[-1].context_pre_only and not any(b.context_pre_only for b in blocks[:-1])
    reps = _run(sd3, images5[:1], "clean")
    assert {n: (v.shape[1], f"{v.shape[2]}x{v.shape[3]}") for n, v in reps.items()} == rows
    assert set(rows.values()) == {(32, "4x4")}


def test_family_of_the_sd3_configs():
    family = family_for_config(load_denoiser_config("tiny-sd3"))
    assert isinstance(family, SD3Family) and family.paper_layers() == SD3_NAMES[1:-1]
    assert [i.kind for i in family.layer_infos(64)] == ["embed", *["joint"] * 24, "norm"]
    assert {i.block for i in family.layer_infos(64)} == {"pos_embed", "transformer_blocks", "norm_out"}
    for name in ("tiny", "tiny-sdxl", "arch:sdxl"):
        assert not isinstance(family_for_config(load_denoiser_config(name)), SD3Family), name
    assert family.default_anomaly_layer(family.paper_layers()) == "transformer_blocks[12]"
    assert family.select_layers("transformer_blocks") == family.select_layers("paper") == SD3_NAMES[1:-1]
    assert family.select_layers("norm_out,pos_embed,transformer_blocks.3") == ["pos_embed", SD3_NAMES[4], "norm_out"]


@pytest.mark.parametrize("protocol", ["clean", "paper"])
def test_extraction_shapes_under_both_protocols(sd3, images5, protocol):
    reps = _run(sd3, images5[:3], protocol)
    infos = {i.name: i for i in sd3.family.layer_infos(64)}
    assert list(reps) == SD3_NAMES
    for name, value in reps.items():
        info = infos[name]
        assert tuple(value.shape) == (3, info.channels, info.height, info.width), name
        assert torch.isfinite(value).all() and value.std() > 0, name


def test_non_square_tokens_keep_rows_and_columns(sd3):
    """A 32 x 48 px input is a 2 x 3 token grid: the row-major token order of the patch embedding."""
    sample = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(0))
    out = {}
    with torch.inference_mode():
        sd3.family.run_denoiser(sd3, sample, 50, sd3.family.encode_prompt(sd3, ""), layers=["pos_embed"],
                                sink=out.__setitem__)
        tokens = sd3.denoiser.pos_embed(sample)
    assert out["pos_embed"].shape == (1, 32, 2, 3)
    torch.testing.assert_close(out["pos_embed"][0, :, 1, 2], tokens[0, 1 * 3 + 2], rtol=0, atol=0)


def test_clean_protocol_is_independent_of_batch_size(sd3, images5):
    extractor = Extractor(sd3, "paper", ExtractionSettings(size=64))
    one, three = run_batched(extractor, images5[:3], 1), run_batched(extractor, images5[:3], 3)
    for name in one:
        torch.testing.assert_close(one[name], three[name], rtol=1e-5, atol=1e-5)


def test_sizes_must_be_whole_tokens_and_fit_the_position_table(sd3):
    family = sd3.family
    assert family.pixel_multiple == 16 and family.layer_infos(48)[0].grid == (3, 3)
    for size in (40, 8, 1040):  # not a multiple of 16; under a token; over 64 tokens (pos_embed_max_size)
        with pytest.raises(LayerError):
            family.layer_infos(size)
    from sdaudit.audit.passes import pass_plan

    grids = {i.name: i.grid for i in family.layer_infos(256)}
    full, crop = pass_plan(grids, 256, ["borders"])
    assert crop.crop_px == 16 and set(crop.layers) == set(grids)  # one token per side
    assert family.layer_infos(256 - 2 * crop.crop_px)[0].grid == (14, 14)


def test_conditioning_is_the_pipelines_with_t5_zeros(sd3):
    """CLIP-L and CLIP-G penultimate states side by side, padded to T5's width, then 256 T5 tokens (zeros
    without T5); pooled = both projections. With the tiny T5 its part is its hidden states."""
    from sdaudit.models.offline_sd3 import build_tiny_sd3

    context = sd3.family.encode_prompt(sd3, "a red cube")
    assert context.prompt_embeds.shape == (1, 77 + 256, 64) and context.pooled.shape == (1, 64)
    ids = sd3.tokenizer("a red cube", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.inference_mode():
        first = sd3.text_encoder(ids, output_hidden_states=True)
        second = sd3.text_encoder_2(ids, output_hidden_states=True)
    torch.testing.assert_close(context.prompt_embeds[0, :77], torch.cat([first.hidden_states[-2][0],
                                                                          second.hidden_states[-2][0]], -1))
    torch.testing.assert_close(context.pooled, torch.cat([first.text_embeds, second.text_embeds], -1))
    assert not context.prompt_embeds[0, 77:].any()
    parts = build_tiny_sd3(t5=True)
    with_t5 = load_model("tiny-sd3", device="cpu")
    with_t5.text_encoder_3, with_t5.tokenizer_3 = parts["text_encoder_3"], parts["tokenizer_3"]
    t5_context = with_t5.family.encode_prompt(with_t5, "a red cube")
    torch.testing.assert_close(t5_context.prompt_embeds[:, :77], context.prompt_embeds[:, :77], rtol=0, atol=0)
    assert t5_context.prompt_embeds[0, 77:].abs().amin(-1).gt(0).all()


@pytest.mark.parametrize("timestep", [0, 50, 500, 999])
def test_timestep_and_sigma_are_the_schedulers(sd3, images5, timestep):
    """The transformer gets the 1000-step schedule's value at index 999 - t; clean noising is
    (1 - sigma) x0 + sigma noise with that step's sigma (the scheduler's own ``scale_noise``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(1000)
    call, = _transformer_calls(sd3, images5[:2], "clean", timestep=timestep)
    value, sigma = flow_noise.timestep_and_sigma(sd3.scheduler, timestep, 16)
    assert value == float(scheduler.timesteps[999 - timestep]) and sigma == float(scheduler.sigmas[999 - timestep])
    assert call["timestep"].dtype == torch.float32 and call["timestep"].tolist() == [value] * 2
    settings = ExtractionSettings(size=64, timestep=timestep).validated()
    pixels = pixels_to_tensor(images5[:2], "clean")
    with torch.inference_mode():
        got, = sd3.family.noised_inputs(sd3, pixels, [0, 1], settings)
        latents = flow_noise.encode(sd3, pixels)
        noise = flow_noise.clean_noise(latents, [0, 1], seed=settings.seed)
        expected = scheduler.scale_noise(latents, scheduler.timesteps[999 - timestep].unsqueeze(0), noise)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_paper_passes_the_helpers_timestep(sd3, images5):
    call, = _transformer_calls(sd3, images5[:2], "paper")
    value, _ = flow_noise.timestep_and_sigma(sd3.scheduler, 50, 16)
    assert call["timestep"].tolist() == [value] * 2 and call["pooled_projections"].shape == (2, 64)


def test_folder_round_trip_without_and_with_t5(sd3, tmp_path, images5):
    from sdaudit.models.offline_sd3 import build_tiny_sd3

    sd3.save_pretrained(tmp_path / "tiny-sd3")
    loaded = load_model(str(tmp_path / "tiny-sd3"), device="cpu")
    assert isinstance(loaded.family, SD3Family) and loaded.text_encoder_3 is None
    a, b = _run(sd3, images5[:2], "clean"), _run(loaded, images5[:2], "clean")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    parts = build_tiny_sd3(t5=True)
    dataclasses.replace(sd3, text_encoder_3=parts["text_encoder_3"], tokenizer_3=parts["tokenizer_3"]).save_pretrained(
        tmp_path / "with-t5")
    loaded = load_model(str(tmp_path / "with-t5"), device="cpu")
    assert type(loaded.text_encoder_3).__name__ == "T5EncoderModel"
    assert loaded.tokenizer_3("a red cube").input_ids == parts["tokenizer_3"]("a red cube").input_ids
    assert loaded.family.encode_prompt(loaded, "a red cube").prompt_embeds[0, 77:].any()


def test_store_round_trip(sd3, tmp_path):
    from sdaudit.extraction import extract
    from sdaudit.extraction.run import prepare_for_model
    from sdaudit.images import load_image
    from sdaudit.store import open_store
    from tests.conftest import photo_folder

    folder = photo_folder(tmp_path / "images", 3, height=64, widen=0)
    layers = ["pos_embed", "transformer_blocks[23]", "norm_out"]
    extract(sd3, folder, tmp_path / "s", layers=layers, size=64, batch_size=2, progress=False)
    store = open_store(tmp_path / "s")
    assert store.layers == layers and store.layer_shape("norm_out") == (32, 4, 4)
    images = [prepare_for_model(load_image(f).image, 64) for f in sorted(folder.iterdir())]
    direct = Extractor(sd3, layers, ExtractionSettings(size=64)).run(images, [0, 1, 2])
    for layer in layers:
        np.testing.assert_allclose(store.read(layer).astype(np.float32), direct[layer].numpy(), rtol=2e-3, atol=2e-3)
    assert store.manifest["config"]["model"]["weights_sha256"] == sd3.weights_sha256


def test_a_whole_audit_runs_on_tiny_sd3_and_the_explorer_serves_it(sd3, tmp_path):
    """End to end through the family seam: the audit, its results, report and the explorer know no SD3 specifics."""
    from fastapi.testclient import TestClient

    from sdaudit.audit import AuditSettings, audit
    from sdaudit.explorer import create_app
    from sdaudit.extraction import extract
    from tests.conftest import photo_folder

    folder = photo_folder(tmp_path / "images", 5, height=64)
    results = audit(sd3, folder, tmp_path / "out", AuditSettings(size=64), progress=False)
    assert len(results["table"]) == len(sd3.family.paper_layers()) == 24
    assert results["model"]["name"] == "tiny-sd3" and (tmp_path / "out" / "report.html").exists()
    assert any(row.get("probe_acc_8") is not None for row in results["table"])

    extract(sd3, folder, tmp_path / "store", layers="all", size=64, progress=False)
    layer = "transformer_blocks[12]"
    with TestClient(create_app([tmp_path / "store"], labels_path=tmp_path / "labels.npy"),
                    base_url="http://127.0.0.1") as client:
        info = client.get("/api/info").json()
        assert layer in str(info)
        body = client.get("/api/stores/0/norms", params={"layer": layer, "images": "0,1"}).json()
        assert body["shape"] == [4, 4] and len(body["maps"]) == 2
        r = client.get("/api/stores/0/similarity", params={"layer": layer, "images": "0", "ref_image": 1,
                                                            "row": 1, "col": 2})
        assert r.status_code == 200 and r.json()["shape"] == [4, 4]
        assert client.get("/api/stores/0/anomalies", params={"layer": layer, "images": "0"}).status_code == 200
        assert client.get("/api/stores/0/presets").status_code == 200
