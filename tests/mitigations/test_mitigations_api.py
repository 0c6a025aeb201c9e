"""The mitigation API: registry, streamed = one-shot, save/load round trip, refusals naming file and mismatch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdaudit.errors import SdauditError, UsageError
from sdaudit.mitigations import (REGISTRY, AnomalyRepair, Mitigation, MitigationFileError, MitigationMismatchError,
                                 NotFittedError, PositionMean, fit_mitigation, load_mitigation)
from sdaudit.mitigations.io import HEADER_KEY

OPTIONS = {"position": {"keep_global_mean": False}, "position-subspace": {"n_components": 3},
           "anomalies": {"method": "mean"}, "channels": {"mode": "normalise"}, "border": {"ring": 2, "weight": 0.5}}


def features(n=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 16, 8, 8)).astype(np.float32)
    x += np.linspace(-1, 1, 8, dtype=np.float32)[None, None, :, None]  # a positional code
    x[:, 5] *= 300  # a massive channel
    x[::3, :, 2:4, 5:7] *= 8  # anomalies
    return x


def test_registry_names():
    assert list(REGISTRY) == ["position", "position-subspace", "anomalies", "channels", "border"]
    with pytest.raises(UsageError, match="unknown mitigation 'blur'"):
        fit_mitigation("blur", features())
    with pytest.raises(UsageError, match="mitigation 'position'.*strength"):
        fit_mitigation("position", features(), strength=2)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_streamed_fit_equals_one_shot(name):
    x = features()
    one = fit_mitigation(name, x, layer="L", **OPTIONS[name])
    streamed = fit_mitigation(name, iter([x[:3], x[3:4], x[4:]]), layer="L", **OPTIONS[name])
    part = REGISTRY[name](**OPTIONS[name])
    for batch in (x[:7], x[7:]):
        part.partial_fit(batch, layer="L")
    for other in (streamed, part):
        assert other.n_images_ == 10 and other.layer_ == "L"
        np.testing.assert_allclose(other.transform(x), one.transform(x), rtol=1e-6, atol=1e-5)
    assert one.fit_transform(x, layer="L").shape == x.shape


@pytest.mark.parametrize("name", list(REGISTRY))
def test_save_load_round_trip(name, tmp_path):
    x = features()
    m = fit_mitigation(name, x[:6], layer="up_blocks[1].upsamplers[0]", **OPTIONS[name])
    path = tmp_path / f"{name}.safetensors"
    m.save(path)
    back = load_mitigation(path)
    assert type(back) is type(m) and back.get_params() == m.get_params() == {**REGISTRY[name]().get_params(),
                                                                             **OPTIONS[name]}
    assert (back.layer_, back.grid_, back.n_channels_, back.n_images_) == ("up_blocks[1].upsamplers[0]", (8, 8), 16, 6)
    assert back.source_ == str(path)
    np.testing.assert_array_equal(back.transform(x), m.transform(x))
    assert type(back).load(path).get_params() == m.get_params()
    back.partial_fit(x[6:])  # a loaded mitigation goes on fitting as if it had never been saved
    np.testing.assert_allclose(back.transform(x), fit_mitigation(name, x, **OPTIONS[name]).transform(x),
                               rtol=1e-6, atol=1e-5)


def test_loading_another_kind_or_version_is_refused(tmp_path):
    path = tmp_path / "pos.safetensors"
    PositionMean().fit(features(), layer="L").save(path)
    with pytest.raises(MitigationFileError, match=r"pos\.safetensors' holds a 'position' mitigation, not 'anomalies'"):
        AnomalyRepair.load(path)
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        header = json.loads(f.metadata()[HEADER_KEY])
    save_file(load_file(str(path)), str(tmp_path / "v9.safetensors"),
              metadata={HEADER_KEY: json.dumps({**header, "format_version": 9})})
    with pytest.raises(MitigationFileError, match=r"v9\.safetensors' has format version 9; this sdaudit reads "):
        Mitigation.load(tmp_path / "v9.safetensors")
    save_file(load_file(str(path)), str(tmp_path / "odd.safetensors"),
              metadata={HEADER_KEY: json.dumps({**header, "kind": "blur"})})
    with pytest.raises(MitigationFileError, match="unknown kind 'blur'"):
        load_mitigation(tmp_path / "odd.safetensors")
    save_file({"sum": np.zeros((3, 3))}, str(tmp_path / "bad.safetensors"), metadata={HEADER_KEY: json.dumps(header)})
    with pytest.raises(MitigationFileError, match="is damaged"):
        load_mitigation(tmp_path / "bad.safetensors")
    (tmp_path / "junk.safetensors").write_text("not a file of tensors")
    with pytest.raises(MitigationFileError, match="junk.safetensors' is not an sdaudit mitigation file"):
        load_mitigation(tmp_path / "junk.safetensors")
    save_file({}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(MitigationFileError, match="plain.safetensors' is not an sdaudit mitigation file"):
        load_mitigation(tmp_path / "plain.safetensors")
    with pytest.raises(MitigationFileError, match="missing.safetensors' does not exist"):
        load_mitigation(tmp_path / "missing.safetensors")


def test_features_of_another_layer_grid_or_channel_count_are_refused(tmp_path):
    x = features()
    path = tmp_path / "pos.safetensors"
    PositionMean().fit(x, layer="conv_in").save(path)
    m = load_mitigation(path)
    with pytest.raises(MitigationMismatchError,
                       match=r"pos\.safetensors\) was fitted on layer 'conv_in', not on 'conv_out'"):
        m.transform(x, layer="conv_out")
    with pytest.raises(MitigationMismatchError, match=r"pos\.safetensors\) was fitted on a 8x8 grid .*are 8x6"):
        m.transform(x[..., :6])
    with pytest.raises(MitigationMismatchError, match=r"fitted on 16 channels .*have 15"):
        m.transform(x[:, :15])
    with pytest.raises(MitigationMismatchError, match="partial_fit: layer 'conv_out'"):
        m.partial_fit(x, layer="conv_out")
    assert issubclass(MitigationMismatchError, SdauditError) and issubclass(MitigationFileError, SdauditError)


def test_unfitted_use_is_refused(tmp_path):
    with pytest.raises(NotFittedError, match="transform: the 'position' mitigation is not fitted"):
        PositionMean().transform(features())
    with pytest.raises(NotFittedError, match="save"):
        PositionMean().save(tmp_path / "x.safetensors")
    with pytest.raises(UsageError, match="no images"):
        PositionMean().fit(iter([]))


def test_torch_input_gives_the_numpy_result():
    import torch

    x = features()
    m = PositionMean().fit(torch.from_numpy(x).half(), layer="L")
    np.testing.assert_allclose(m.position_mean_, x.astype(np.float16).astype(np.float64).mean(axis=0), atol=1e-6)
    out = m.transform(torch.from_numpy(x))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_array_equal(out, m.transform(x))
