"""Bad input gets one clear ValueError (what, expected, received), the same in all three
frameworks, raised before any computation. Messages are compared across frameworks."""
import numpy as np
import pytest

from conformance.spec import registry
from conformance import weights
from conformance.backends.build import build
from conformance.core.config import Config

rng = np.random.default_rng(0)


def inputs_of(name, variant="default"):
    entry = registry.get(name)
    cfg = entry.config(variant)
    return cfg, entry.inputs(cfg, variant)


def with_(inputs, **changes):
    out = dict(inputs)
    out.update(changes)
    return out


def bad_cases():
    """(id, registry case, inputs, the words the message must contain)."""
    cfg, mha = inputs_of("multi_head_attention")
    _, cross = inputs_of("multi_head_attention", "cross")
    _, sdpa = inputs_of("scaled_dot_product_attention")
    _, soft = inputs_of("softmax", "padding")
    _, lin = inputs_of("linear")
    _, drop = inputs_of("dropout")
    bcfg, bert = inputs_of("bert")
    _, gpt = inputs_of("gpt2")
    long_ids = rng.integers(0, bcfg.vocab_size, (2, bcfg.max_positions + 1))
    return [
        ("rank", "multi_head_attention", with_(mha, x=mha["x"][0]), "x must have rank 3 (B, T, D); received shape (7, 32)"),
        ("width", "multi_head_attention", with_(mha, x=mha["x"][..., :5]), "x must have last axis d_model=32 (..., 32); received shape (2, 7, 5)"),
        ("int_x", "multi_head_attention", with_(mha, x=np.ones((2, 7, 32), np.int64)), "x must be a floating dtype"),
        ("mask_shape", "multi_head_attention", with_(mha, mask=mha["mask"][:, :5]), "mask must have shape (B, S) = (2, 7); received shape (2, 5)"),
        ("mask_1d", "multi_head_attention", with_(mha, mask=mha["mask"][0]), "mask must have shape (B, S) = (2, 7); received shape (7,)"),
        ("context_batch", "multi_head_attention", with_(cross, context=cross["context"][:1]), "context must have shape (B, S, D) = (2, '*', 32); received shape (1, 10, 32)"),
        ("sdpa_head_dim", "scaled_dot_product_attention", with_(sdpa, k=sdpa["k"][..., :4]), "k must have shape (B, H, S, Dh) = (2, 4, '*', 8); received shape (2, 4, 9, 4)"),
        ("sdpa_mask", "scaled_dot_product_attention", with_(sdpa, mask=sdpa["mask"][..., :3]), "mask must have shape (B, 1 or H, T, S) = (2, 1, 7, 9); received shape (2, 1, 7, 3)"),
        ("softmax_mask", "softmax", with_(soft, mask=soft["mask"][:, :, :2]), "mask must have shape (B, 1 or H, T, S) = (2, 1, 7, 7); received shape (2, 1, 2, 7)"),
        ("linear_width", "linear", with_(lin, x=lin["x"][..., :3]), "x must have last axis d_in=32 (..., 32); received shape (2, 7, 3)"),
        ("dropout_keep", "dropout", with_(drop, keep=drop["keep"][:1]), "keep must have shape (same as x) = (2, 7, 32); received shape (1, 7, 32)"),
        ("vocab", "bert", with_(bert, input_ids=bert["input_ids"] + bcfg.vocab_size), f"input_ids must lie in [0, {bcfg.vocab_size}) (vocab_size)"),
        ("negative_id", "bert", with_(bert, input_ids=-bert["input_ids"] - 1), f"input_ids must lie in [0, {bcfg.vocab_size}) (vocab_size)"),
        ("too_long", "bert", {"input_ids": long_ids}, f"position_ids must lie in [0, {bcfg.max_positions}) (max_positions: the sequence is longer than the position table); received values in [0, {bcfg.max_positions}]"),
        ("token_type", "bert", with_(bert, token_type_ids=bert["token_type_ids"] + 2), "token_type_ids must lie in [0, 2) (type_vocab_size)"),
        ("bert_mask", "bert", with_(bert, attention_mask=bert["attention_mask"][:, 1:]), "attention_mask must have shape (B, T) = (2, 7); received shape (2, 6)"),
        ("float_ids", "bert", with_(bert, input_ids=bert["input_ids"].astype(np.float64)), "input_ids must hold integer ids; received dtype float"),
        ("ids_rank", "gpt2", with_(gpt, input_ids=gpt["input_ids"][0], attention_mask=None), "input_ids must have rank 2 (B, T); received shape (7,)"),
    ]


CASES = bad_cases()


@pytest.mark.parametrize("case_id,name,inputs,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_message_is_the_same_in_every_framework(case_id, name, inputs, words, framework):
    entry = registry.get(name)
    cfg = entry.config()
    m = build(framework, cfg, weights.initialize(cfg), dtype="float32")
    inputs = {k: v for k, v in inputs.items() if v is not None}
    with pytest.raises(ValueError) as err:
        m(**inputs)
    assert words in str(err.value)
    if framework != "numpy":  # word for word what the reference says
        with pytest.raises(ValueError) as ref_err:
            build("numpy", cfg, weights.initialize(cfg), dtype="float32")(**inputs)
        assert str(err.value) == str(ref_err.value)


@pytest.mark.parametrize("fields,words", [
    ({"d_model": 30, "num_heads": 4}, "num_heads must divide d_model; received d_model=30, num_heads=4"),
    ({"activation": "swish"}, "activation must be one of ['gelu', 'gelu_tanh', 'relu', 'silu']; received activation='swish'"),
    ({"d_model": 0}, "d_model must be a positive int; received d_model=0"),
    ({"dropout": 1.0}, "dropout must be in [0, 1); received dropout=1.0"),
    ({"layer_norm_eps": 0.0}, "layer_norm_eps must be > 0"),
    ({"head": "ner"}, "head must be one of"),
    ({"attention_scale": 0.0}, "attention_scale must be > 0 or None; received 0.0"),
])
def test_bad_config(fields, words):
    with pytest.raises(ValueError, match=None) as err:
        Config(kind="bert", **fields)
    assert words in str(err.value)


def test_bad_build_arguments():
    cfg = registry.get("linear").config()
    w = weights.initialize(cfg)
    with pytest.raises(ValueError, match=r"dtype must be one of \['float64', 'float32', 'tf32', 'bfloat16', 'float16', "
                                         r"'mixed_bfloat16', 'mixed_float16'\]; received dtype='int8'"):
        build("torch", cfg, w, dtype="int8")
    with pytest.raises(ValueError, match=r"framework must be one of .*received framework='jax'"):
        build("jax", cfg, w)
    with pytest.raises(ValueError, match="device must be one of \\['cpu', 'cuda'\\]; received device='tpu'"):
        build("torch", cfg, w, device="tpu")
    with pytest.raises(ValueError, match="unknown component or model 'lstm'"):
        build("torch", cfg.replace(kind="lstm"), w)
