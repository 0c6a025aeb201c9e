"""Layer enumeration (46 / 45), names, selection, and shapes at two sizes."""

from __future__ import annotations

import pytest

from sdaudit.layer_names import LayerError, block_of, kind_of, normalize_name, select_layers
from sdaudit.models import family_for_config, layer_infos, load_denoiser_config

# (channels, grid) of SD-1.5 at 512 px, from the design notes' table.
SD15_512 = {
    "conv_in": (320, 64), "down_blocks[0].attentions[1]": (320, 64), "down_blocks[0].downsamplers[0]": (320, 32),
    "down_blocks[1].resnets[0]": (640, 32), "down_blocks[1].downsamplers[0]": (640, 16),
    "down_blocks[2].attentions[1]": (1280, 16), "down_blocks[2].downsamplers[0]": (1280, 8),
    "down_blocks[3].resnets[1]": (1280, 8), "mid_block.attentions[0]": (1280, 8), "up_blocks[0].resnets[2]": (1280, 8),
    "up_blocks[0].upsamplers[0]": (1280, 16), "up_blocks[1].attentions[2]": (1280, 16),
    "up_blocks[1].upsamplers[0]": (1280, 32), "up_blocks[2].resnets[0]": (640, 32),
    "up_blocks[2].upsamplers[0]": (640, 64), "up_blocks[3].attentions[2]": (320, 64), "conv_out": (4, 64),
}
PAPER_BLOCK_COUNTS = {"conv_in": 1, "down_blocks[0]": 5, "down_blocks[1]": 5, "down_blocks[2]": 5, "down_blocks[3]": 2,
                      "mid_block": 3, "up_blocks[0]": 3, "up_blocks[1]": 7, "up_blocks[2]": 7, "up_blocks[3]": 6,
                      "conv_out": 1}


@pytest.mark.parametrize("model", ["tiny", "sd15", "sd21"])
def test_46_layers_and_45_paper_layers(model, tiny):
    infos = layer_infos(load_denoiser_config(model), 512)
    names = [i.name for i in infos]
    assert len(names) == 46
    assert names == tiny.family.layer_names()  # tiny has SD-1.5's exact layer names
    paper = family_for_config(load_denoiser_config(model)).paper_layers()
    assert len(paper) == 45 and "up_blocks[0].resnets[2]" not in paper
    counts = {}
    for name in paper:
        counts[block_of(name)] = counts.get(block_of(name), 0) + 1
    assert counts == PAPER_BLOCK_COUNTS


@pytest.mark.parametrize("size", [512, 256])
def test_sd15_shapes_at_two_sizes(size):
    infos = {i.name: i for i in layer_infos(load_denoiser_config("sd15"), size)}
    for name, (channels, grid) in SD15_512.items():
        assert infos[name].channels == channels
        assert infos[name].grid == (grid * size // 512, grid * size // 512)


def test_meta_shapes_equal_a_real_forward(tiny, images5):
    from sdaudit.extraction import ExtractionSettings, Extractor

    reps = Extractor(tiny, "all", ExtractionSettings(size=64)).run(images5[:1], [0])
    infos = {i.name: i for i in layer_infos(dict(tiny.unet.config), 64)}
    for name, tensor in reps.items():
        assert tuple(tensor.shape[1:]) == (infos[name].channels, infos[name].height, infos[name].width)


def test_selection(tiny):
    available = tiny.family.layer_names()
    assert len(tiny.family.select_layers("all")) == 46
    assert len(tiny.family.select_layers("paper")) == 45
    with pytest.raises(LayerError, match="no 'paper' layer set"):
        select_layers("paper", available)  # the paper set is the family's to say
    up1 = select_layers("up_blocks[1]", available)
    assert len(up1) == 7 and up1[-1] == "up_blocks[1].upsamplers[0]"
    assert select_layers("up_blocks.1.upsamplers.0,conv_in", available) == ["conv_in", "up_blocks[1].upsamplers[0]"]
    assert select_layers(["mid_block"], available) == ["mid_block.resnets[0]", "mid_block.attentions[0]",
                                                         "mid_block.resnets[1]"]
    with pytest.raises(LayerError, match=r"unknown layer 'up_blocks\[9\]' \(did you mean 'up_blocks\[\d\]'.*"
                                         r"'sdaudit layers --model MODEL' lists"):
        select_layers("up_blocks[9]", available)
    with pytest.raises(LayerError, match="no layers selected"):
        select_layers("", available)


def test_names_and_kinds():
    assert normalize_name("down_blocks.1.attentions.0") == "down_blocks[1].attentions[0]"
    assert [kind_of(n) for n in ("conv_in", "mid_block.resnets[0]", "up_blocks[1].attentions[2]",
                                 "down_blocks[0].downsamplers[0]", "up_blocks[0].upsamplers[0]")] == \
        ["conv", "res", "attn", "down", "up"]


def test_size_must_fit_the_unet():
    """Any whole number of latent tokens runs (the border experiment's crops are no multiples of 64)."""
    with pytest.raises(LayerError, match="not a positive multiple of 8"):
        layer_infos(load_denoiser_config("tiny"), 500)
    grids = {i.name: (i.height, i.width) for i in layer_infos(load_denoiser_config("tiny"), 496)}
    assert grids["conv_in"] == (62, 62) and grids["up_blocks[3].resnets[0]"] == (62, 62)


def test_the_family_names_its_semantic_and_default_anomaly_layers():
    """What the audit asks the family instead of knowing U-Net names itself."""
    family = family_for_config(load_denoiser_config("sd15"))
    names = family.paper_layers()
    semantic = family.semantic_layers(names)
    assert semantic and {block_of(n) for n in semantic} == {"up_blocks[1]", "up_blocks[2]"}
    assert family.default_anomaly_layer(names) == "up_blocks[1].upsamplers[0]"
    without = [n for n in names if n != "up_blocks[1].upsamplers[0]"]
    assert family.default_anomaly_layer(without) == "up_blocks[2].upsamplers[0]"  # the second up-block upsampler
    assert family.default_anomaly_layer(["conv_in", "mid_block.resnets[0]", "conv_out"]) == "mid_block.resnets[0]"


def test_choose_examples_takes_the_semantic_layer_from_the_given_candidates():
    from sdaudit.audit.maps import choose_examples

    table = [{"layer": n, "block": block_of(n), "kind": kind_of(n), "grid": 8, "probe_acc_8": acc}
             for n, acc in (("down_blocks[1].resnets[0]", 0.1), ("up_blocks[1].resnets[0]", 0.9),
                            ("up_blocks[2].resnets[0]", 0.5))]
    grids = {row["layer"]: (8, 8) for row in table}
    chosen = {e["id"]: e["layer"] for e in choose_examples(table, None, None, grids,
                                                           semantic_layers=["up_blocks[1].resnets[0]",
                                                                            "up_blocks[2].resnets[0]"])}
    assert chosen["semantic"] == "up_blocks[2].resnets[0]"  # the least positional candidate, not down_blocks[1]
    chosen = {e["id"]: e["layer"] for e in choose_examples(table, None, None, grids)}
    assert chosen["semantic"] == "up_blocks[1].resnets[0]"  # no candidates: the middle layer
