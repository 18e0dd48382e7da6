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
    _, rope = inputs_of("rotary_embedding")
    _, rms = inputs_of("rms_norm")
    _, glu = inputs_of("gated_feed_forward")
    lcfg, llama = inputs_of("llama")
    llama_long = rng.integers(0, lcfg.vocab_size, (2, lcfg.max_positions + 1))
    _, t5 = inputs_of("t5")
    acfg, bart = inputs_of("bart")
    _, rel = inputs_of("relative_position_bias")
    bart_long = rng.integers(0, acfg.vocab_size, (2, acfg.longest + 1))
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
        ("rotary_rank", "rotary_embedding", with_(rope, q=rope["q"][0]), "q must have rank 4 (B, H, T, Dh); received shape (4, 7, 8)"),
        ("rotary_head_dim", "rotary_embedding", with_(rope, q=rope["q"][..., :6]), "q must have last axis head_dim=8 (..., 8); received shape (2, 4, 7, 6)"),
        ("rotary_k", "rotary_embedding", with_(rope, k=rope["k"][:, :, :5]), "k must have shape (B, KV, T, Dh) = (2, '*', 7, 8); received shape (2, 4, 5, 8)"),
        ("rotary_int_q", "rotary_embedding", with_(rope, q=np.ones((2, 4, 7, 8), np.int64)), "q must be a floating dtype"),
        ("rotary_float_positions", "rotary_embedding", with_(rope, position_ids=rope["position_ids"].astype(np.float64)), "position_ids must hold integer ids; received dtype float"),
        ("rotary_positions_shape", "rotary_embedding", with_(rope, position_ids=rope["position_ids"][:, 1:]), "position_ids must have shape (B, T) = (2, 7); received shape (2, 6)"),
        ("rotary_no_positions", "rotary_embedding", with_(rope, q=rope["q"][:, :, :0], k=rope["k"][:, :, :0], position_ids=rope["position_ids"][:, :0]), "position_ids must hold at least one position (B, T) with T >= 1; received shape (2, 0)"),
        ("rotary_too_long", "rotary_embedding", with_(rope, position_ids=rope["position_ids"] + 60), "position_ids must lie in [0, max_positions) = [0, 64) (rope_scaling='none' rotates only the positions it was trained on: a longer context needs a rope_scaling); received values in [60, 66]"),
        ("rotary_negative", "rotary_embedding", with_(rope, position_ids=rope["position_ids"] - 1), "position_ids must lie in [0, max_positions) = [0, 64)"),
        ("rms_width", "rms_norm", with_(rms, x=rms["x"][..., :5]), "x must have last axis d_model=32 (..., 32); received shape (2, 7, 5)"),
        ("rms_int_x", "rms_norm", with_(rms, x=np.ones((2, 7, 32), np.int64)), "x must be a floating dtype"),
        ("gated_width", "gated_feed_forward", with_(glu, x=glu["x"][..., :5]), "x must have last axis d_model=32 (..., 32); received shape (2, 7, 5)"),
        ("llama_too_long", "llama", {"input_ids": llama_long}, f"position_ids must lie in [0, max_positions) = [0, {lcfg.max_positions}) (rope_scaling='none' rotates only the positions it was trained on: a longer context needs a rope_scaling); received values in [0, {lcfg.max_positions}]"),
        ("llama_positions_shape", "llama", with_(llama, position_ids=llama["position_ids"][:, 1:]), "position_ids must have shape (B, T) like input_ids = (2, 7); received shape (2, 6)"),
        ("llama_float_positions", "llama", with_(llama, position_ids=llama["position_ids"].astype(np.float64)), "position_ids must hold integer ids; received dtype float"),
        ("llama_vocab", "llama", with_(llama, input_ids=llama["input_ids"] + lcfg.vocab_size), f"input_ids must lie in [0, {lcfg.vocab_size}) (vocab_size)"),
        ("llama_mask", "llama", with_(llama, attention_mask=llama["attention_mask"][:, 2:]), "attention_mask must have shape (B, T) = (2, 7); received shape (2, 5)"),
        ("t5_no_decoder_ids", "t5", with_(t5, decoder_input_ids=None, decoder_attention_mask=None), "decoder_input_ids must be given to the t5 encoder-decoder (the target, starting with the decoder start token: the head predicts each next token); received None (for the encoder alone use head='encoder')"),
        ("bart_no_decoder_ids", "bart", with_(bart, decoder_input_ids=None, decoder_attention_mask=None), "decoder_input_ids must be given to the bart encoder-decoder"),
        ("t5_decoder_mask", "t5", with_(t5, decoder_attention_mask=t5["decoder_attention_mask"][:, 1:]), "decoder_attention_mask must have shape (B, T) = (2, 5); received shape (2, 4)"),
        ("t5_float_decoder_ids", "t5", with_(t5, decoder_input_ids=t5["decoder_input_ids"].astype(np.float64)), "decoder_input_ids must hold integer ids; received dtype float"),
        ("bart_decoder_vocab", "bart", with_(bart, decoder_input_ids=bart["decoder_input_ids"] + acfg.vocab_size), f"input_ids must lie in [0, {acfg.vocab_size}) (vocab_size)"),
        ("bart_too_long", "bart", {"input_ids": bart_long, "decoder_input_ids": bart["decoder_input_ids"]}, f"position_ids must lie in [0, {acfg.max_positions}) (max_positions: the sequence is longer than the position table); received values in [2, {acfg.max_positions}]"),
        ("relative_float", "relative_position_bias", with_(rel, query_positions=rel["query_positions"].astype(np.float64)), "query_positions must hold integer ids; received dtype float"),
        ("relative_rank", "relative_position_bias", with_(rel, key_positions=rel["key_positions"][None]), "key_positions must have rank 1 (S,); received shape (1, 9)"),
        ("position_bias_shape", "multi_head_attention", with_(mha, position_bias=np.zeros((1, 4, 7, 5))), "position_bias must have shape (1 or B, H, T, S) = (1, 4, 7, 7); received shape (1, 4, 7, 5)"),
        ("position_bias_int", "multi_head_attention", with_(mha, position_bias=np.zeros((1, 4, 7, 7), np.int64)), "position_bias must be a floating dtype"),
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


@pytest.mark.parametrize("variant", ["linear", "dynamic", "llama3", "yarn"])
def test_scaled_rotary_takes_any_position_but_a_negative_one(variant, framework):
    """With a rope scaling, positions past max_positions are what the scaling is for; a negative one is
    still an error, word for word the reference's."""
    entry = registry.get("rotary_embedding")
    cfg = entry.config(variant)
    inputs = entry.inputs(cfg, variant)
    m = build(framework, cfg, {}, dtype="float32")
    assert m(**with_(inputs, position_ids=inputs["position_ids"] + 2 * cfg.max_positions))["q"].shape == inputs["q"].shape
    with pytest.raises(ValueError) as err:
        m(**with_(inputs, position_ids=inputs["position_ids"] - 3))
    assert str(err.value) == "position_ids must be >= 0; received values in [-3, 3]"


@pytest.mark.parametrize("fields,words", [
    ({"d_model": 30, "num_heads": 4}, "num_heads must divide d_model; received d_model=30, num_heads=4"),
    ({"activation": "swish"}, "activation must be one of ['gelu', 'gelu_tanh', 'relu', 'silu']; received activation='swish'"),
    ({"d_model": 0}, "d_model must be a positive int; received d_model=0"),
    ({"dropout": 1.0}, "dropout must be in [0, 1); received dropout=1.0"),
    ({"layer_norm_eps": 0.0}, "layer_norm_eps must be > 0"),
    ({"head": "ner"}, "head must be one of"),
    ({"attention_scale": 0.0}, "attention_scale must be > 0 or None; received 0.0"),
    ({"rope_scaling": "dynamic", "d_model": 8, "num_heads": 4}, "rope_scaling='dynamic' needs a rotated width above 2"),
    ({"rope_scaling": "llama3", "rope_low_freq_factor": 4.0}, "rope_high_freq_factor must be > rope_low_freq_factor"),
    ({"rotary_pairing": "pairs"}, "rotary_pairing must be one of ['half', 'interleaved']; received rotary_pairing='pairs'"),
    ({"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads must divide num_heads (each key/value head serves a group of query heads); received num_heads=4, num_kv_heads=3"),
    ({"rope_scaling": "longrope"}, "rope_scaling must be one of ['none', 'linear', 'dynamic', 'llama3', 'yarn']; received rope_scaling='longrope'"),
    ({"sliding_window": 600, "max_positions": 512}, "sliding_window must be at most max_positions=512 (a window wider than every sequence the model takes never slides: set sliding_window=None); received sliding_window=600"),
    ({"sliding_window": 0}, "sliding_window must be a positive int or None; received sliding_window=0"),
    ({"layer_types": ("sliding_attention", "full_attention")}, "layer_types names sliding_attention layers, which need a sliding_window"),
    ({"layer_types": ("full_attention",), "num_layers": 2}, "layer_types must give one type per layer (num_layers=2); received 1 types"),
    ({"attn_logit_softcap": -1.0}, "attn_logit_softcap must be > 0 or None; received attn_logit_softcap=-1.0"),
    ({"rotary_dim": 5}, "rotary_dim must be even and at most head_dim=8; received rotary_dim=5"),
    ({"position": "relative", "relative_buckets": 5}, "relative_buckets must be an even int >= 4 (half a direction, half of that exact); received relative_buckets=5"),
    ({"position": "relative", "relative_max_distance": 16}, "relative_max_distance must exceed relative_buckets // 2 = 16 (the exact buckets' reach); received relative_max_distance=16"),
    ({"position_offset": 64}, "position_offset must be an int in [0, max_positions=64); received position_offset=64"),
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
