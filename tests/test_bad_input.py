"""Bad input gets one clear ValueError (what, expected, received), the same in all three
frameworks, raised before any computation. Messages are compared across frameworks."""
import numpy as np
import pytest

from conformance.spec import registry
from conformance import weights
from conformance.backends import finite
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
    _, vit = inputs_of("vit")
    _, patch = inputs_of("patch_embedding")
    pixels = vit["pixel_values"]                                                  # (2, 3, 16, 16), patches of 4
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
        ("rotary_no_positions", "rotary_embedding", with_(rope, q=rope["q"][:, :, :0], k=rope["k"][:, :, :0], position_ids=rope["position_ids"][:, :0]), "q must not be empty (every axis at least 1); received shape (2, 4, 0, 8)"),
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
        ("vit_rank", "vit", {"pixel_values": pixels[0]}, "pixel_values must have rank 4 (B, C, H, W); received shape (3, 16, 16)"),
        ("vit_channels_last", "vit", {"pixel_values": pixels.transpose(0, 2, 3, 1)}, "pixel_values must be channels first (B, C, H, W) with C = num_channels = 3 on axis 1; received shape (2, 16, 16, 3), which is channels last (B, H, W, C): transpose it with (0, 3, 1, 2)"),
        ("vit_channels", "vit", {"pixel_values": np.concatenate([pixels, pixels[:, :1]], axis=1)}, "pixel_values must have num_channels = 3 channels on axis 1 (B, C, H, W); received shape (2, 4, 16, 16)"),
        ("vit_not_whole_patches", "vit", {"pixel_values": pixels[:, :, :15]}, "pixel_values height and width must be multiples of patch_size = 4 (B, C, H, W), or interpolate_pos_encoding=True (which drops the remainder); received shape (2, 3, 15, 16)"),
        ("vit_other_size", "vit", {"pixel_values": pixels[:, :, :12, :8]}, "pixel_values must be image_size x image_size = 16 x 16 (B, C, 16, 16): the position table holds 4 x 4 patches and [CLS] (interpolate_pos_encoding=True resizes it); received shape (2, 3, 12, 8)"),
        ("vit_int_pixels", "vit", {"pixel_values": (pixels * 100).astype(np.int64)}, "pixel_values must be a floating dtype"),
        ("patch_channels_last", "patch_embedding", {"pixel_values": patch["pixel_values"].transpose(0, 2, 3, 1)}, "which is channels last (B, H, W, C): transpose it with (0, 3, 1, 2)"),
        ("patch_not_whole_patches", "patch_embedding", {"pixel_values": patch["pixel_values"][..., :14]}, "pixel_values height and width must be multiples of patch_size = 4 (B, C, H, W)"),
        ("t5_no_decoder_ids", "t5", with_(t5, decoder_input_ids=None, decoder_attention_mask=None), "decoder_input_ids must be given to the t5 encoder-decoder (the target, starting with the decoder start token: the head predicts each next token); received None (for the encoder alone use head='encoder')"),
        ("bart_no_decoder_ids", "bart", with_(bart, decoder_input_ids=None, decoder_attention_mask=None), "decoder_input_ids must be given to the bart encoder-decoder"),
        ("t5_decoder_mask", "t5", with_(t5, decoder_attention_mask=t5["decoder_attention_mask"][:, 1:]), "decoder_attention_mask must have shape (B, T) = (2, 5); received shape (2, 4)"),
        ("t5_float_decoder_ids", "t5", with_(t5, decoder_input_ids=t5["decoder_input_ids"].astype(np.float64)), "decoder_input_ids must hold integer ids; received dtype float"),
        ("bart_decoder_vocab", "bart", with_(bart, decoder_input_ids=bart["decoder_input_ids"] + acfg.vocab_size), f"input_ids must lie in [0, {acfg.vocab_size}) (vocab_size)"),
        ("bart_too_long", "bart", {"input_ids": bart_long, "decoder_input_ids": bart["decoder_input_ids"]}, f"position_ids must lie in [0, {acfg.max_positions}) (max_positions: the sequence is longer than the position table); received values in [2, {acfg.max_positions}]"),
        ("relative_float", "relative_position_bias", with_(rel, query_positions=rel["query_positions"].astype(np.float64)), "query_positions must hold integer ids; received dtype float"),
        ("relative_negative", "relative_position_bias", with_(rel, key_positions=rel["key_positions"] - 100), "key_positions must be positions >= 0 (counted from the first token); received a minimum of -100"),
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


def bad_variant_cases():
    """(id, registry case, inputs, the words the message must contain) for models of a family's variant."""
    rcfg, roberta = inputs_of("bert", "roberta")
    _, distil = inputs_of("bert", "distilbert")
    dcfg, deberta = inputs_of("deberta")
    _, rel = inputs_of("disentangled_attention")
    inside = roberta["input_ids"].copy()
    inside[0, 3] = rcfg.pad_token_id
    too_long = rng.integers(2, rcfg.vocab_size, (1, rcfg.max_positions - 1))
    return [
        ("roberta_pad_inside", ("bert", "roberta"), with_(roberta, input_ids=inside),
         f"input_ids must hold the padding id 1 only before the first or after the last real token of a row "
         f"(positions count the real tokens, so a pad between two of them would shift the position of every token "
         f"after it); received 1 at row 0, position 3, between real tokens"),
        ("roberta_too_long", ("bert", "roberta"), {"input_ids": too_long},
         f"position_ids must lie in [0, {rcfg.max_positions}) (max_positions: the sequence is longer than the position "
         f"table); received values in [2, {rcfg.max_positions}]"),
        ("distilbert_segments", ("bert", "distilbert"), with_(distil, token_type_ids=np.zeros_like(distil["input_ids"])),
         "token_type_ids must be left out: the model has no segment embeddings (type_vocab_size=0); received "
         "token_type_ids"),
        ("deberta_mask", ("deberta", "default"), with_(deberta, attention_mask=deberta["attention_mask"][:, 2:]),
         "attention_mask must have shape (B, T) = (2, 7); received shape (2, 5)"),
        ("deberta_vocab", ("deberta", "default"), with_(deberta, input_ids=deberta["input_ids"] + dcfg.vocab_size),
         f"input_ids must lie in [0, {dcfg.vocab_size}) (vocab_size)"),
        ("relative_table", ("disentangled_attention", "default"), with_(rel, rel=rel["rel"][:7]),
         "rel must have shape (2 relative_span, D) = (8, 32); received shape (7, 32)"),
        ("relative_width", ("disentangled_attention", "default"), with_(rel, x=rel["x"][..., :5]),
         "x must have last axis d_model=32 (..., 32); received shape (2, 7, 5)"),
    ]


VARIANT_CASES = bad_variant_cases()


@pytest.mark.parametrize("case_id,case,inputs,words", VARIANT_CASES, ids=[c[0] for c in VARIANT_CASES])
def test_bad_input_to_a_variant_is_refused_alike_in_every_framework(case_id, case, inputs, words, framework):
    cfg = registry.get(case[0]).config(case[1])
    w = weights.initialize(cfg)
    with pytest.raises(ValueError) as err:
        build(framework, cfg, w, dtype="float32")(**inputs)
    assert words in str(err.value)
    if framework != "numpy":  # word for word what the reference says
        with pytest.raises(ValueError) as ref_err:
            build("numpy", cfg, w, dtype="float32")(**inputs)
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
    ({"layer_norm_eps": 0.0}, "layer_norm_eps must be a finite number > 0; received layer_norm_eps=0.0"),
    ({"head": "ner"}, "head must be one of"),
    ({"attention_scale": 0.0}, "attention_scale must be a finite number > 0 or None; received attention_scale=0.0"),
    ({"rope_scaling": "dynamic", "d_model": 8, "num_heads": 4}, "rope_scaling='dynamic' needs a rotated width above 2"),
    ({"rope_scaling": "llama3", "rope_low_freq_factor": 4.0}, "rope_high_freq_factor must be > rope_low_freq_factor"),
    ({"rotary_pairing": "pairs"}, "rotary_pairing must be one of ['half', 'interleaved']; received rotary_pairing='pairs'"),
    ({"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads must divide num_heads (each key/value head serves a group of query heads); received num_heads=4, num_kv_heads=3"),
    ({"rope_scaling": "longrope"}, "rope_scaling must be one of ['none', 'linear', 'dynamic', 'llama3', 'yarn']; received rope_scaling='longrope'"),
    ({"sliding_window": 600, "max_positions": 512}, "sliding_window must be at most max_positions=512 (a window wider than every sequence the model takes never slides: set sliding_window=None); received sliding_window=600"),
    ({"sliding_window": 0}, "sliding_window must be a positive int or None; received sliding_window=0"),
    ({"layer_types": ("sliding_attention", "full_attention")}, "layer_types names sliding_attention layers, which need a sliding_window"),
    ({"layer_types": ("full_attention",), "num_layers": 2}, "layer_types must give one type per layer (num_layers=2); received 1 types"),
    ({"attn_logit_softcap": -1.0}, "attn_logit_softcap must be a finite number > 0 or None; received attn_logit_softcap=-1.0"),
    ({"rotary_dim": 5}, "rotary_dim must be even and at most head_dim=8; received rotary_dim=5"),
    # every count positive, every bool a bool, every float finite: from the annotations (Config._check_types)
    ({"num_layers": 0}, "Config.num_layers must be a positive int; received num_layers=0"),
    ({"num_decoder_layers": -1}, "Config.num_decoder_layers must be a positive int; received num_decoder_layers=-1"),
    ({"num_labels": 0}, "Config.num_labels must be a positive int; received num_labels=0"),
    ({"d_model": True}, "Config.d_model must be a positive int; received d_model=True"),
    ({"causal": 1}, "Config.causal must be True or False; received causal=1"),
    ({"output_bias": 0}, "Config.output_bias must be True or False or None; received output_bias=0"),
    ({"layer_norm_eps": float("inf")}, "Config.layer_norm_eps must be a finite number > 0; received layer_norm_eps=inf"),
    ({"layer_norm_eps": "1e-12"}, "Config.layer_norm_eps must be a finite number > 0; received layer_norm_eps='1e-12'"),
    ({"rope_theta": float("nan")}, "Config.rope_theta must be a finite number > 0; received rope_theta=nan"),
    ({"rms_norm_offset": float("inf")}, "Config.rms_norm_offset must be a finite number; received rms_norm_offset=inf"),
    ({"sliding_window_right": -1}, "Config.sliding_window_right must be an int >= 0; received sliding_window_right=-1"),
    ({"mask_fill": 5.0}, "Config.mask_fill must be a number <= -10000 (far below any score, so a masked position gets "
                         "no weight; -inf allowed); received mask_fill=5.0"),
    ({"mask_fill": float("nan")}, "Config.mask_fill must be a number <= -10000"),
    ({"checkpoint": None}, "Config.checkpoint must be a str; received checkpoint=None"),
    ({"num_layer_groups": 3, "num_layers": 2}, "num_layer_groups must be at most num_layers=2 (each group is run by "
                                               "at least one layer); received num_layer_groups=3"),
    ({"relative_attention": ("c2p", "p2q")}, "relative_attention[1] must be one of ['c2p', 'p2c']; "
                                             "received relative_attention[1]='p2q'"),
    ({"position_buckets": 1}, "position_buckets must be 0 (exact distances) or at least 2"),
    ({"type_vocab_size": -1}, "type_vocab_size must be an int >= 0; received type_vocab_size=-1"),
    ({"embedding_size": 0}, "embedding_size must be a positive int or None; received embedding_size=0"),
    ({"pad_positions": True, "pad_token_id": 63, "max_positions": 64}, "pad_positions numbers tokens from "
                                                                      "pad_token_id + 1 = 64, which must be below "
                                                                      "max_positions=64"),
    ({"mlm_activation": "swish"}, "mlm_activation must be one of ['gelu', 'gelu_tanh', 'relu', 'silu']"),
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


def test_every_config_field_refuses_a_value_of_the_wrong_type():
    """The type checks read each field's annotation, so a field added later is checked with no new code."""
    import dataclasses
    wrong = {"int": "3", "float": "x", "bool": 1, "str": 3, "tuple": "x"}
    for f in dataclasses.fields(Config):
        with pytest.raises(ValueError, match=rf"Config\.{f.name}[ \[]") as err:
            Config(**{"kind": "bert", f.name: wrong[f.type.split(" | ")[0]]})
        assert "received" in str(err.value), f.name


def test_config_from_a_dict_that_is_not_one():
    with pytest.raises(ValueError, match="a Config is read from a dict of its fields; received list"):
        Config.from_dict([["kind", "bert"]])
    with pytest.raises(ValueError, match=r"Config fields must include kind \(the registry entry\); received \['d_model'\]"):
        Config.from_dict({"d_model": 32})


def test_every_input_maker_names_its_inputs_by_their_kind():
    """The front door reads an input's kind from its name (`checks.input_kind`): every entry's own inputs
    must pass it, so a new family whose input maker disagrees with its names is caught here."""
    from conformance.core import checks
    for name, variant in registry.CASES:
        entry = registry.get(name)
        for key, value in entry.inputs(entry.config(variant), variant).items():
            kind = checks.input_kind(key)
            allowed = {"float": "f", "index": "i", "mask": "bi"}[kind]
            assert value.dtype.kind in allowed, (name, variant, key, kind, value.dtype)
            checks.array(key, value)  # raises if the maker's own values are refused
        assert set(entry.inputs(entry.config(variant), variant)) <= set(entry.signature()), (name, variant)


@pytest.mark.parametrize("bad,words", [
    (2, "received 1 other values: 2"), (-1, "received 1 other values: -1"), (0.5, "received 1 other values: 0.5"),
    (float("nan"), "received 1 other values: nan")])
def test_a_mask_holds_only_0_and_1(bad, words, framework):
    cfg, inputs = inputs_of("bert")
    mask = inputs["attention_mask"].astype(np.float64)
    mask[1, 3] = bad
    m = build(framework, cfg, weights.initialize(cfg))
    with pytest.raises(ValueError) as err:
        m(**with_(inputs, attention_mask=mask))
    assert str(err.value) == f"attention_mask must hold only 0 and 1 (or False and True); {words}"


def test_every_accepted_mask_dtype_means_the_same(framework):
    """bool, int32, int64, float32 and float64 masks of the same 0/1 values: the same outputs, bit for bit."""
    cfg, inputs = inputs_of("multi_head_attention")
    m = build(framework, cfg, weights.initialize(cfg))
    reference = m(**inputs)["output"]
    for dtype in ("int32", "int64", "float32", "float64"):
        np.testing.assert_array_equal(m(**with_(inputs, mask=inputs["mask"].astype(dtype)))["output"], reference)
    with pytest.raises(ValueError, match=r"mask must be bool \(True = attend\) or 0/1 in \('int32', 'int64', "
                                         r"'float16', 'bfloat16', 'float32', 'float64'\); received dtype uint8"):
        m(**with_(inputs, mask=inputs["mask"].astype(np.uint8)))


def test_the_received_dtype_is_the_callers(framework):
    """The front door sees the caller's arrays before any cast to the model's dtype."""
    cfg, inputs = inputs_of("bert")
    m = build(framework, cfg, weights.initialize(cfg), dtype="float32")
    with pytest.raises(ValueError) as err:
        m(**with_(inputs, input_ids=inputs["input_ids"].astype(np.float64)))
    assert str(err.value) == "input_ids must hold integer ids; received dtype float64 (expected int32 or int64)"


def test_unknown_and_missing_inputs_are_named(framework):
    cfg, inputs = inputs_of("gpt2")
    m = build(framework, cfg, weights.initialize(cfg))
    with pytest.raises(ValueError) as err:
        m(**inputs, token_type_ids=inputs["input_ids"])
    assert str(err.value) == "GPT2 takes inputs ['input_ids', 'attention_mask']; received unknown input 'token_type_ids'"
    with pytest.raises(ValueError) as err:
        m(attention_mask=inputs["attention_mask"])
    assert str(err.value) == "GPT2 requires inputs ['input_ids']; received no 'input_ids' (given: ['attention_mask'])"
    assert m(input_ids=inputs["input_ids"], attention_mask=None)["logits"].shape == (2, 7, cfg.vocab_size)  # None: left out


def test_a_non_finite_input_is_refused_and_the_opt_out_lets_it_through(framework):
    cfg, inputs = inputs_of("layer_norm")
    x = inputs["x"].copy()
    x[1, 2, 3], x[0, 0, 0] = np.nan, np.inf
    w = weights.initialize(cfg)
    with pytest.raises(ValueError) as err:
        build(framework, cfg, w, dtype="float64")(x=x)
    assert str(err.value) == ("x must be finite; received 1 NaN and 1 inf values, the first at index (0, 0, 0) "
                              "(build(..., check_finite=False) lets them through)")
    out = build(framework, cfg, w, dtype="float64", check_finite=False)(x=x)["output"]
    assert np.isnan(out[1, 2]).all() and np.isfinite(out[1, 1]).all()  # the row holding the NaN, and only it


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_output_that_overflows_names_its_first_op_in_float32_and_float64(dtype, framework):
    """Finite inputs whose scores pass the dtype's range: the first op that went inf is named, identically."""
    entry = registry.get("scaled_dot_product_attention")
    cfg = entry.config()
    inputs = entry.inputs(cfg)
    scale = 1e19 if dtype == "float32" else 1e155
    big = with_(inputs, q=np.full_like(inputs["q"], scale), k=np.full_like(inputs["k"], scale))
    with pytest.raises(finite.NonFiniteError) as err:
        build(framework, cfg, {}, dtype=dtype)(**big)
    assert err.value.op == "scores" and str(err.value).startswith(f"{framework} {dtype}: ")
    with pytest.raises(finite.NonFiniteError) as ref:
        build("numpy", cfg, {}, dtype=dtype)(**big)
    assert str(err.value).removeprefix(framework) == str(ref.value).removeprefix("numpy")
    assert np.isnan(build(framework, cfg, {}, dtype=dtype, check_finite=False)(**big)["output"]).any()


def test_a_sinusoidal_model_is_held_to_max_positions_too(framework):
    cfg = registry.get("transformer").config()
    m = build(framework, cfg, weights.initialize(cfg))
    ids = np.zeros((1, cfg.max_positions + 1), np.int64)
    with pytest.raises(ValueError) as err:
        m(input_ids=ids, decoder_input_ids=ids[:, :3])
    assert str(err.value) == (f"position_ids must lie in [0, {cfg.max_positions}) (max_positions: the sequence is "
                              f"longer than the position table); received values in [0, {cfg.max_positions}]")


def test_build_refuses_what_is_not_a_config_or_weights():
    cfg = registry.get("linear").config()
    w = weights.initialize(cfg)
    for bad in (cfg.to_dict(), None, "linear"):
        with pytest.raises(ValueError, match=rf"cfg must be a Config .*; received {type(bad).__name__}"):
            build("numpy", bad, w)
    with pytest.raises(weights.WeightsError, match=r"weights must be a mapping \{canonical name: np.ndarray\}"):
        build("numpy", cfg, None)
    with pytest.raises(weights.WeightsError, match="non-array kernel: expected a NumPy array, received list"):
        build("torch", cfg, {**w, "kernel": w["kernel"].tolist()})


def test_an_interpolating_vit_takes_any_size_of_at_least_one_patch(framework):
    """With interpolate_pos_encoding an image of another size is resized to, not refused; below one patch it is,
    word for word the reference's."""
    entry = registry.get("vit")
    cfg = entry.config("interpolate")
    w = weights.initialize(cfg)
    m = build(framework, cfg, w, dtype="float32")
    assert m(pixel_values=rng.standard_normal((1, 3, 9, 30)))["last_hidden_state"].shape == (1, 1 + 2 * 7, cfg.d_model)
    with pytest.raises(ValueError) as err:
        m(pixel_values=rng.standard_normal((1, 3, 3, 30)))
    assert str(err.value) == ("pixel_values height and width must be at least patch_size = 4 (B, C, H, W); "
                              "received shape (1, 3, 3, 30)")


@pytest.mark.parametrize("fields,words", [
    ({"image_size": 30, "patch_size": 4}, "patch_size must divide image_size (the position table holds whole patches); "
                                          "received image_size=30, patch_size=4"),
    ({"num_channels": 0}, "num_channels must be a positive int; received num_channels=0"),
])
def test_bad_vit_config(fields, words):
    with pytest.raises(ValueError) as err:
        Config(kind="vit", **fields)
    assert words in str(err.value)
