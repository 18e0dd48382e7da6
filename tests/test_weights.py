"""Shared weights: deterministic initialisation, safetensors round trip, and one error
that lists every missing, unexpected and mis-shaped tensor."""
import numpy as np
import pytest

from conformance.spec import presets, registry
from conformance import weights


def test_initialize_is_deterministic_and_canonical():
    cfg = registry.get("bert").config()
    a, b = weights.initialize(cfg, seed=3), weights.initialize(cfg, seed=3)
    assert weights.fingerprint(a) == weights.fingerprint(b)
    assert weights.fingerprint(a) != weights.fingerprint(weights.initialize(cfg, seed=4))
    assert {k: v.shape for k, v in a.items()} == registry.param_shapes(cfg)
    assert all(v.dtype == np.float32 for v in a.values())
    assert a["encoder.0.attention.query.kernel"].shape == (cfg.d_model, cfg.d_model)  # [in, out]
    assert a["encoder.0.feed_forward.inner.kernel"].shape == (cfg.d_model, cfg.d_ff)


def test_a_tensor_does_not_depend_on_the_others():
    """Per-name streams: a model with one more layer keeps the first layers' values."""
    cfg = registry.get("bert").config()
    deeper = weights.initialize(cfg.replace(num_layers=cfg.num_layers + 1))
    for name, value in weights.initialize(cfg).items():
        np.testing.assert_array_equal(deeper[name], value)


def test_save_load_round_trip(tmp_path):
    cfg = registry.get("gpt2").config()
    w = weights.initialize(cfg)
    weights.save(w, tmp_path / "w.safetensors", cfg)
    back = weights.load(tmp_path / "w.safetensors")
    assert weights.fingerprint(back) == weights.fingerprint(w)
    assert weights.load_config(tmp_path / "w.safetensors") == cfg


def test_check_lists_every_problem():
    cfg = registry.get("encoder_layer").config()
    w = weights.initialize(cfg)
    del w["attention.query.bias"]
    del w["feed_forward.outer.kernel"]
    w["attention.extra.kernel"] = np.zeros((2, 2), np.float32)
    w["attention.key.kernel"] = w["attention.key.kernel"].T[:, :7]
    w["attention_norm.gamma"] = np.full(cfg.d_model, np.nan, np.float32)
    with pytest.raises(weights.WeightsError) as err:
        weights.check(cfg, w)
    message = str(err.value)
    assert "5 weight problem(s)" in message
    assert "missing attention.query.bias: expected shape (32,)" in message
    assert "missing feed_forward.outer.kernel: expected shape (64, 32)" in message
    assert "unexpected attention.extra.kernel: shape (2, 2)" in message
    assert "mis-shaped attention.key.kernel: expected (32, 32), received (32, 7)" in message
    assert "non-finite attention_norm.gamma: 32 NaN/inf values" in message


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(weights.WeightsError, match="weights file not found: .*nope.safetensors"):
        weights.load(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(weights.WeightsError, match="is not a readable safetensors file"):
        weights.load(bad)


def test_published_parameter_counts_from_the_declaration():
    """Counted from the reference's declared shapes: nothing is allocated for gpt2-xl."""
    expected = {"bert-base": 109_482_240, "bert-large": 335_141_888,
                "gpt2": 124_439_808, "gpt2-medium": 354_823_168}
    for name, count in expected.items():
        shapes = registry.param_shapes(presets.get(name))
        assert sum(int(np.prod(s)) for s in shapes.values()) == count, name


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown preset 'bert-huge'; known presets: bart-tiny, "):
        presets.get("bert-huge")
