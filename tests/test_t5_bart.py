"""T5 and BART: transformers' own files in, the relative position buckets, and every difference from a
library, measured and named.

conformance/suites/test_transformers_families.py proves our weights written with `to_hf` run in
transformers and generate as it does. Here the files come from transformers itself (`save_pretrained` of
a model it built from a config it wrote): every numerics-changing config.json field is set to a value
that is not its default, one at a time, and `from_hf` must give transformers' logits. Then transformers
5.24's own ways (T5's forced `tie_word_embeddings`, its float32 norm statistic, BART's zero
`final_logits_bias`) and keras-hub's (BART's positions without the offset, no logits bias) are each shown
to be exactly the named cause.
"""
import json
import re

import numpy as np
import pytest
import torch
import transformers

from conformance import weights
from conformance.backends.build import build
from conformance.compare.tolerance import TOLERANCES, compare
from conformance.costs import params
from conformance.oracles import keras_hub as kho
from conformance.oracles import transformers as hf
from conformance.spec import families, presets, registry
from conformance.weights import checkpoints
from numpy_ref.relative_position import relative_position_bucket

T5_SMALL = dict(vocab_size=61, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, dropout_rate=0.0,
                decoder_start_token_id=0)
BART_SMALL = dict(vocab_size=61, d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=48,
                  decoder_ffn_dim=48, encoder_attention_heads=4, decoder_attention_heads=4,
                  max_position_embeddings=40, dropout=0.0)
# (class, config.json values that are not transformers' defaults): each row changes the numbers
FIELDS = [
    ("T5ForConditionalGeneration", {}),
    ("T5ForConditionalGeneration", {"feed_forward_proj": "gated-gelu"}),
    ("T5ForConditionalGeneration", {"feed_forward_proj": "gated-silu"}),
    ("T5ForConditionalGeneration", {"feed_forward_proj": "gelu_new"}),
    ("T5ForConditionalGeneration", {"relative_attention_num_buckets": 8, "relative_attention_max_distance": 12}),
    ("T5ForConditionalGeneration", {"layer_norm_epsilon": 0.3}),
    ("T5ForConditionalGeneration", {"d_kv": 6}),
    ("T5ForConditionalGeneration", {"num_decoder_layers": 3}),
    ("T5ForConditionalGeneration", {"tie_word_embeddings": False}),  # 5.24: still tied, but not rescaled
    ("T5ForConditionalGeneration", {"tie_word_embeddings": False, "untie": True}),  # Flan-T5: its own head
    ("T5EncoderModel", {}),
    ("T5EncoderModel", {"feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 16}),
    ("BartForConditionalGeneration", {}),
    ("BartForConditionalGeneration", {"scale_embedding": True}),
    ("BartForConditionalGeneration", {"activation_function": "relu"}),
    ("BartForConditionalGeneration", {"max_position_embeddings": 20}),
    ("BartForConditionalGeneration", {"logits_bias": True}),  # a final_logits_bias that is not zero
    ("BartModel", {}),
]
IDS = np.random.default_rng(0).integers(0, 61, size=(2, 9))
MASK = np.array([[1] * 9, [1] * 6 + [0] * 3])
DECODER_IDS = np.random.default_rng(1).integers(0, 61, size=(2, 7))


def save_hf(cls, path, untie=False, logits_bias=False, **overrides):
    """transformers' model of `cls` from its config, every parameter redrawn (std 0.3, norms around 1: its
    own initialization is too gentle to show a wrong field), saved with `save_pretrained`."""
    config = (transformers.T5Config(**{**T5_SMALL, **overrides}) if cls.startswith("T5")
              else transformers.BartConfig(**{**BART_SMALL, **overrides}))
    torch.manual_seed(0)
    model = getattr(transformers, cls)(config)
    if untie:  # transformers 5.24 ties T5's head to the table whatever the config: Flan-T5's is its own
        model.lm_head.weight = torch.nn.Parameter(torch.randn(config.vocab_size, config.d_model) * 0.3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not (untie and name == "lm_head.weight"):
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
        if logits_bias:
            model.final_logits_bias.copy_(torch.randn_like(model.final_logits_bias))
    model.save_pretrained(path)
    return model.eval()


def hf_outputs(model, **inputs):
    with torch.no_grad():
        out = model(**{k: torch.tensor(v) for k, v in inputs.items()})
    return {k: v.double().numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}


def run_inputs(cls):
    inputs = {"input_ids": IDS, "attention_mask": MASK}
    return inputs if cls == "T5EncoderModel" else {**inputs, "decoder_input_ids": DECODER_IDS}


@pytest.mark.parametrize("cls,overrides", FIELDS, ids=[f"{c}-{'-'.join(o) or 'defaults'}" for c, o in FIELDS])
def test_transformers_files_import_with_every_numerics_field(cls, overrides, tmp_path):
    model = save_hf(cls, tmp_path, **overrides)
    cfg, w = weights.from_hf(tmp_path)
    inputs = run_inputs(cls)
    expected = hf_outputs(model, **inputs)
    keys = {"logits", "last_hidden_state", "encoder_last_hidden_state"} & set(expected)
    for framework in ("numpy", "torch", "tf"):
        ours = build(framework, cfg, w, dtype="float32")(**inputs)
        for key in keys:
            result = compare(f"{framework} from_hf({cls} {overrides}).{key}", ours[key], expected[key],
                             TOLERANCES["float32"])
            assert result.passed, str(result)
    weights.to_hf(cfg, w, tmp_path / "back", cls)  # and back: transformers' own tensors, bit for bit
    theirs = checkpoints.read_tensors(tmp_path)
    again = checkpoints.read_tensors(tmp_path / "back")
    for name in set(theirs) & set(again):
        np.testing.assert_array_equal(again[name], theirs[name], err_msg=name)
    assert weights.from_hf(tmp_path / "back")[0] == cfg


def test_the_fields_read_are_the_ones_that_change_the_logits(tmp_path):
    """The test above can fail: the same files with the field ignored are far off."""
    cases = [("T5ForConditionalGeneration", {"relative_attention_num_buckets": 8, "relative_attention_max_distance": 12},
              dict(relative_max_distance=128)),
             ("T5ForConditionalGeneration", {"tie_word_embeddings": False}, dict(scale_logits=True)),
             ("T5ForConditionalGeneration", {"feed_forward_proj": "gated-gelu"}, dict(activation="gelu")),
             ("BartForConditionalGeneration", {}, dict(position_offset=0)),
             ("BartForConditionalGeneration", {"scale_embedding": True}, dict(scale_embeddings=False))]
    for i, (cls, overrides, wrong) in enumerate(cases):
        model = save_hf(cls, tmp_path / str(i), **overrides)
        cfg, w = weights.from_hf(tmp_path / str(i))
        inputs = run_inputs(cls)
        ours = build("numpy", cfg.replace(**wrong), w, dtype="float32")(**inputs)["logits"]
        assert not compare(f"{cls} with {wrong}", ours, hf_outputs(model, **inputs)["logits"],
                           TOLERANCES["float32"]).passed


def test_t5_head_tie_and_rescale_as_transformers_5_24_reads_them(tmp_path):
    """T5Config forces tie_word_embeddings=True and keeps the old flag as `scale_decoder_outputs`. A hub T5
    1.1 file (tie_word_embeddings false, its own lm_head) is untied and not rescaled; the same config built
    from scratch in 5.24 has a tied head that is not rescaled; T5 1.0 is tied and rescaled."""
    expect = {"t10": ({}, (True, True)), "from_config": ({"tie_word_embeddings": False}, (True, False)),
              "flan": ({"tie_word_embeddings": False, "untie": True}, (False, False))}
    for name, (overrides, (tied, scaled)) in expect.items():
        save_hf("T5ForConditionalGeneration", tmp_path / name, **overrides)
        cfg, _ = weights.from_hf(tmp_path / name)
        assert (cfg.tie_embeddings, cfg.scale_logits) == (tied, scaled), name
        saved = json.loads((tmp_path / name / "config.json").read_text())
        assert saved["tie_word_embeddings"] is True and saved["scale_decoder_outputs"] is scaled
    hub = json.loads((tmp_path / "flan" / "config.json").read_text())  # as the hub writes Flan-T5's
    hub.pop("scale_decoder_outputs")
    (tmp_path / "flan" / "config.json").write_text(json.dumps({**hub, "tie_word_embeddings": False}))
    cfg, _ = weights.from_hf(tmp_path / "flan")
    assert (cfg.tie_embeddings, cfg.scale_logits) == (False, False)


def test_flan_t5_counts_its_own_head_which_a_config_built_t5_would_not():
    """76,961,152 is Flan-T5 small with its untied head (the published count): transformers 5.24 builds the
    model from the config with the head tied (60,511,616) unless it is given a head of its own (`_adjust`)."""
    cfg = presets.get("flan-t5-small")
    assert params.count(cfg)["total"] == params.transformers_count(cfg)["total"] == 76_961_152
    config = transformers.AutoConfig.for_model(**checkpoints.config_to_hf(
        cfg, families.get("t5").checkpoint(cfg), "T5ForConditionalGeneration"))
    with torch.device("meta"):
        assert transformers.T5ForConditionalGeneration(config).num_parameters() == 76_961_152 - 32128 * 512


@pytest.mark.parametrize("name,count", [("t5-small", 60_506_624), ("t5-base", 222_903_552),
                                        ("flan-t5-small", 76_961_152), ("bart-base", 139_420_416),
                                        ("bart-large", 406_291_456)])
def test_published_counts(name, count):
    cfg = presets.get(name)
    assert params.count(cfg)["total"] == params.transformers_count(cfg)["total"] == count


def test_bart_zero_final_logits_bias_reads_as_none(tmp_path):
    """transformers keeps final_logits_bias as a zero buffer (never trained): read past when zero (a buffer,
    not written back: transformers fills a missing one with zeros), a parameter of ours when not."""
    save_hf("BartForConditionalGeneration", tmp_path / "zero")
    save_hf("BartForConditionalGeneration", tmp_path / "set", logits_bias=True)
    zero, _ = weights.from_hf(tmp_path / "zero")
    cfg, w = weights.from_hf(tmp_path / "set")
    assert not zero.logits_bias and cfg.logits_bias and w["logits_bias"].shape == (61,)
    np.testing.assert_array_equal(checkpoints.read_tensors(tmp_path / "zero")["final_logits_bias"], 0)


@pytest.mark.parametrize("cls,key,value,message", [
    ("T5ForConditionalGeneration", "feed_forward_proj", "swiglu",
     r"feed_forward_proj must be '\{act\}' or 'gated-\{act\}' with act one of .*received feed_forward_proj='swiglu'"),
    ("T5ForConditionalGeneration", "feed_forward_proj", "gated-gelu-fast",
     r"received feed_forward_proj='gated-gelu-fast'"),
    ("T5ForConditionalGeneration", "is_decoder", True, r"is_decoder must be False"),
    ("BartForConditionalGeneration", "decoder_ffn_dim", 64,
     r"decoder_ffn_dim must equal encoder_ffn_dim \(one width and one head count serve both stacks here\); "
     r"received decoder_ffn_dim=64, encoder_ffn_dim=48"),
    ("BartForConditionalGeneration", "decoder_attention_heads", 2, r"decoder_attention_heads must equal "
                                                                    r"encoder_attention_heads"),
    ("BartForConditionalGeneration", "tie_word_embeddings", False, r"tie_word_embeddings must be True"),
    ("BartForConditionalGeneration", "activation_function", "swish",
     r"activation_function must be one of .*received activation_function='swish'"),
])
def test_unsupported_values_are_named(cls, key, value, message, tmp_path):
    save_hf(cls, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(ValueError, match=message):
        weights.from_hf(tmp_path)


@pytest.mark.parametrize("cls,key,value,names", [
    ("T5ForConditionalGeneration", "num_decoder_layers", 1, ["unexpected decoder.block.1.layer.0.SelfAttention.q.weight"]),
    ("T5ForConditionalGeneration", "feed_forward_proj", "gated-gelu",
     ["missing encoder.0.feed_forward.gate.kernel (HF encoder.block.0.layer.1.DenseReluDense.wi_0.weight",
      "unexpected encoder.block.0.layer.1.DenseReluDense.wi.weight"]),
    ("T5ForConditionalGeneration", "d_kv", 4, ["mis-shaped encoder.0.attention.query.kernel (HF "
                                               "encoder.block.0.layer.0.SelfAttention.q.weight, stored [out, in]): "
                                               "expected (32, 16), received (32, 32)"]),
    ("BartForConditionalGeneration", "max_position_embeddings", 30,
     ["mis-shaped encoder_position.table (HF model.encoder.embed_positions.weight): expected (32, 32), "
      "received (42, 32)"]),
])
def test_a_config_that_disagrees_with_its_tensors_is_one_error_naming_them(cls, key, value, names, tmp_path):
    save_hf(cls, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(weights.WeightsError) as err:
        weights.from_hf(tmp_path)
    assert isinstance(err.value, ValueError) and str(err.value).startswith(f"checkpoint {tmp_path}: ")
    for name in names:
        assert name in str(err.value), str(err.value)


def test_a_gated_erf_gelu_has_no_t5_spelling(tmp_path):
    cfg = registry.get("t5").config("v1_1").replace(activation="gelu")
    with pytest.raises(ValueError, match=r"activation must not be 'gelu' \(erf\) with feed_forward='gated' for a T5 "
                                         r"config.json: its 'gated-gelu' is the tanh form"):
        weights.to_hf(cfg, weights.initialize(cfg), tmp_path)


# ------------------------------------------------------------------ the relative position buckets

RELATIVE = np.arange(-3000, 3001)


@pytest.mark.parametrize("buckets,distance", [(32, 128), (32, 64), (64, 256), (8, 16), (6, 7)])
@pytest.mark.parametrize("bidirectional", [True, False], ids=["encoder", "decoder"])
def test_buckets_are_transformers_and_keras_hubs(buckets, distance, bidirectional):
    """Every offset from -3000 to 3000: transformers' `_relative_position_bucket`, ours in each framework,
    and (its hard-coded 32 / 128) keras-hub's."""
    import keras
    from keras_hub.src.models.t5.t5_multi_head_attention import T5MultiHeadAttention

    import tf_impl.relative_position as tf_rp
    import torch_impl.relative_position as torch_rp
    theirs = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        torch.from_numpy(RELATIVE), bidirectional, buckets, distance).numpy()
    np.testing.assert_array_equal(relative_position_bucket(RELATIVE, bidirectional, buckets, distance), theirs)
    np.testing.assert_array_equal(torch_rp.relative_position_bucket(torch.from_numpy(RELATIVE), bidirectional,
                                                                    buckets, distance).numpy(), theirs)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(tf_rp.relative_position_bucket(
        RELATIVE, bidirectional, buckets, distance)), theirs)
    if (buckets, distance) == (32, 128):
        kh = T5MultiHeadAttention(is_decoder=not bidirectional, hidden_dim=8, key_value_dim=4, num_heads=2,
                                  dropout=0.0)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(kh._relative_position_bucket(
            RELATIVE, bidirectional=bidirectional, num_buckets=buckets, max_distance=distance)), theirs)


def test_bucket_table_of_t5():
    """The buckets T5's walkthrough shows: exact offsets near 0, then logarithmic, and the last from 128 on."""
    encoder = relative_position_bucket(np.arange(-20, 21), True, 32, 128)
    assert encoder.tolist() == [10, 10, 10, 10, 10, 9, 9, 9, 9, 8, 8, 8, 8, 7, 6, 5, 4, 3, 2, 1, 0,
                                17, 18, 19, 20, 21, 22, 23, 24, 24, 24, 24, 25, 25, 25, 25, 26, 26, 26, 26, 26]
    decoder = relative_position_bucket(np.array([0, -1, -15, -16, -17, -20, -31, -32, -50, -64, -100, -127, -128,
                                                 -1000, 5]), False, 32, 128)
    assert decoder.tolist() == [0, 1, 15, 16, 16, 17, 21, 21, 24, 26, 30, 31, 31, 31, 0]


# ------------------------------------------------------------------ transformers' own numerics, named

def test_transformers_t5_norm_statistic_is_float32_even_in_float64(monkeypatch):
    """T5LayerNorm takes the variance of `hidden_states.to(torch.float32)` whatever the dtype: in float64
    transformers' T5 is 1e-7 off the float64 reference, and 1e-14 once its norm computes in float64."""
    from transformers.models.t5 import modeling_t5
    entry = registry.get("t5")
    cfg = entry.config("v1_1")
    w = weights.initialize(cfg, seed=3, std=0.2)
    inputs = entry.inputs(cfg, "v1_1", seed=3, batch=3, length=9)
    ours = build("numpy", cfg, w, dtype="float64")(**inputs)["logits"]
    as_is = np.abs(hf.run(cfg, w, inputs, "eager", "float64")["logits"] - ours).max()

    def forward_float64(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))
    monkeypatch.setattr(modeling_t5.T5LayerNorm, "forward", forward_float64)
    fixed = np.abs(hf.run(cfg, w, inputs, "eager", "float64")["logits"] - ours).max()
    assert 1e-8 < as_is < 1e-4 and fixed < 1e-12, (as_is, fixed)


# ------------------------------------------------------------------ keras-hub's numerics, named

def test_keras_hub_bart_positions_have_no_offset():
    """BartBackbone reads position p at row p, BART at row p + 2. With our whole table loaded it is the
    reference without the offset (the suite's check) and far from BART; built as its converter builds it
    (the table from row 2, two rows shorter) it is BART, within float32."""
    entry = registry.get("bart")
    cfg = entry.config()
    w = weights.initialize(cfg, seed=0, std=0.2)
    inputs = entry.inputs(cfg, seed=0, batch=3, length=9)
    bart = build("numpy", cfg, w, dtype="float64")(**inputs)
    assert kho.differences(cfg) == {"position_offset": (2, 0)}
    whole = kho.run(kho.load(kho.backbone(cfg), cfg, w), cfg, **inputs)
    assert np.abs(whole["logits"] - bart["logits"]).max() > 0.1
    converted = kho.backbone(cfg.replace(max_positions=cfg.max_positions - 2, position_offset=0))
    shifted = {k: v[2:] if k.endswith("_position.table") else v for k, v in w.items()}
    kho.load(converted, cfg.replace(max_positions=cfg.max_positions - 2, position_offset=0), shifted)
    theirs = kho.run(converted, cfg.replace(max_positions=cfg.max_positions - 2, position_offset=0), **inputs)
    for key in ("logits", "last_hidden_state", "encoder_last_hidden_state"):
        assert compare(f"keras-hub converted {key}", theirs[key], bart[key], TOLERANCES["float32"]).passed


def test_keras_hub_bart_has_no_logits_bias():
    """keras-hub's BART has no final_logits_bias: a BART with one is refused, by name; its logits are ours
    without the bias, the difference exactly the bias."""
    entry = registry.get("bart")
    cfg = entry.config("scaled_biased").replace(scale_embeddings=False)
    w = weights.initialize(cfg, seed=0, std=0.2)
    assert "logits_bias" in kho.refusal(cfg)
    inputs = entry.inputs(cfg, seed=0, batch=3, length=9)
    plain = cfg.replace(logits_bias=False)
    theirs = kho.run(kho.load(kho.backbone(plain), plain, {k: v for k, v in w.items() if k != "logits_bias"}), plain,
                     **inputs)["logits"]
    ours = build("numpy", kho.numerics_config(cfg), w, dtype="float64")(**inputs)["logits"]
    assert compare("ours - bias", ours - w["logits_bias"], theirs, TOLERANCES["float32"]).passed
    assert np.abs(ours - theirs).max() > 0.5 * np.abs(w["logits_bias"]).max()


def test_keras_hub_t5_norm_stays_in_the_input_dtype():
    """keras-hub's T5LayerNorm has no float32 upcast (`rms_norm_upcast="none"`): the same number in float32,
    the one numerics difference its table names for T5 1.1."""
    cfg = registry.get("t5").config("v1_1")
    assert kho.differences(cfg) == {"rms_norm_upcast": ("statistic", "none")}
    assert re.search("relative_buckets=32", kho.refusal(registry.get("t5").config()))
