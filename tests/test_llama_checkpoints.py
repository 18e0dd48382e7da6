"""The LLaMA family's checkpoints: transformers' own files in, Meta's original layout in.

conformance/suites/test_transformers_families.py proves our weights written with `to_hf` run
in transformers. Here the files come from transformers itself (`save_pretrained` of a model
it initialized from a config it wrote): every numerics-changing config.json field is set to a
value that is not its default, one at a time, and `from_hf` must give a model with
transformers' logits. A field read wrongly or not at all changes the logits and fails.
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
from conformance.spec import registry

SMALL = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
ROPE_LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8}
# (class, config.json values that are not transformers' defaults): each row changes the numbers
FIELDS = [
    ("LlamaForCausalLM", {}),
    ("LlamaForCausalLM", {"rms_norm_eps": 0.3}),
    ("LlamaForCausalLM", {"rope_parameters": {"rope_type": "default", "rope_theta": 10.0}}),
    ("LlamaForCausalLM", {"rope_parameters": ROPE_LLAMA3}),
    ("LlamaForCausalLM", {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}}),
    ("LlamaForCausalLM", {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
                          "max_position_embeddings": 6}),
    ("LlamaForCausalLM", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                              "original_max_position_embeddings": 8, "attention_factor": 1.5}}),
    ("LlamaForCausalLM", {"head_dim": 16}),
    ("LlamaForCausalLM", {"attention_bias": True, "mlp_bias": True}),
    ("LlamaForCausalLM", {"tie_word_embeddings": True}),
    ("LlamaForCausalLM", {"hidden_act": "gelu_pytorch_tanh", "num_key_value_heads": 1}),
    ("MistralForCausalLM", {"sliding_window": 3}),
    ("MistralForCausalLM", {"sliding_window": None}),
    ("Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    ("Qwen2ForCausalLM", {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 1}),
    ("GemmaForCausalLM", {"head_dim": 16}),
    ("GemmaForCausalLM", {"hidden_act": "gelu", "rms_norm_eps": 0.3}),
    ("Gemma2ForCausalLM", {"head_dim": 16, "query_pre_attn_scalar": 9}),
    ("Gemma2ForCausalLM", {"attn_logit_softcapping": 2.0, "final_logit_softcapping": 1.5, "sliding_window": 3}),
    ("Gemma2ForCausalLM", {"layer_types": ["full_attention", "sliding_attention"], "sliding_window": 2}),
]


def save_hf(cls, path, **overrides):
    config_cls = getattr(transformers, cls.replace("ForCausalLM", "Config"))
    extra = {"attention_dropout": 0.0}
    if cls.startswith("Gemma2"):
        extra.update(sliding_window=4, attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    torch.manual_seed(0)
    model = getattr(transformers, cls)(config_cls(**{**SMALL, **extra, **overrides}))
    with torch.no_grad():  # transformers draws std 0.02 and unit norms: too gentle to show a wrong field
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("norm.weight") and "Gemma" not in cls else 0.0))
    model.save_pretrained(path)
    return model.eval()


def hf_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.double().numpy()


IDS = np.random.default_rng(0).integers(0, 61, size=(2, 9))
MASK = np.ones_like(IDS)


@pytest.mark.parametrize("cls,overrides", FIELDS, ids=[f"{c}-{'-'.join(o) or 'defaults'}" for c, o in FIELDS])
def test_transformers_files_import_with_every_numerics_field(cls, overrides, tmp_path):
    model = save_hf(cls, tmp_path, **overrides)
    cfg, w = weights.from_hf(tmp_path)
    assert cfg.checkpoint == model.config.model_type
    expected = hf_logits(model, IDS, MASK)
    for framework in ("numpy", "torch", "tf"):
        ours = build(framework, cfg, w, dtype="float32")(input_ids=IDS, attention_mask=MASK)["logits"]
        result = compare(f"{framework} from_hf({cls} {overrides})", ours, expected, TOLERANCES["float32"])
        assert result.passed, str(result)


def test_a_field_read_wrongly_changes_the_logits(tmp_path):
    """The test above can fail: the same file with rms_norm_eps (or rope_theta) ignored is far off."""
    model = save_hf("LlamaForCausalLM", tmp_path, rms_norm_eps=0.3,
                    rope_parameters={"rope_type": "default", "rope_theta": 10.0})
    cfg, w = weights.from_hf(tmp_path)
    expected = hf_logits(model, IDS, MASK)
    for wrong in (cfg.replace(layer_norm_eps=1e-6), cfg.replace(rope_theta=10000.0)):
        ours = build("numpy", wrong, w, dtype="float32")(input_ids=IDS, attention_mask=MASK)["logits"]
        assert not compare("wrong field", ours, expected, TOLERANCES["float32"]).passed


@pytest.mark.parametrize("cls,key,value,message", [
    ("LlamaForCausalLM", "rope_parameters", {"rope_type": "longrope", "rope_theta": 1e4},
     r"rope type must be one of \['default', 'linear', 'dynamic', 'llama3', 'yarn'\]; received rope_type='longrope'"),
    ("LlamaForCausalLM", "rope_parameters", {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0, "mscale": 1.0},
     r"mscale is not implemented here; received mscale=1.0"),
    ("LlamaForCausalLM", "hidden_act", "mish", r"hidden_act must be one of .*received hidden_act='mish'"),
    ("GemmaForCausalLM", "use_bidirectional_attention", True, r"use_bidirectional_attention must be False"),
])
def test_unsupported_values_are_named(cls, key, value, message, tmp_path):
    save_hf(cls, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(ValueError, match=message):
        weights.from_hf(tmp_path)


# ------------------------------------------------------------------ Meta's original layout

def meta_dir(path, n_heads=4, n_kv_heads=2, scaled=False, dtype=torch.float32):
    """A Meta release directory written by hand: params.json, consolidated.00.pth with Meta's names
    (wq/wk/wv/wo, w1 gate, w2 down, w3 up, [out, in] weights), rotating interleaved pairs."""
    dim, layers, vocab, hidden = 32, 2, 61, 48
    params = {"dim": dim, "n_layers": layers, "n_heads": n_heads, "n_kv_heads": n_kv_heads, "vocab_size": vocab,
              "norm_eps": 1e-5, "rope_theta": 500000.0, "multiple_of": 16, "use_scaled_rope": scaled}
    dh = dim // n_heads
    g = torch.Generator().manual_seed(0)
    shapes = {"tok_embeddings.weight": (vocab, dim), "norm.weight": (dim,), "output.weight": (vocab, dim)}
    for i in range(layers):
        shapes.update({f"layers.{i}.attention.wq.weight": (n_heads * dh, dim),
                       f"layers.{i}.attention.wk.weight": (n_kv_heads * dh, dim),
                       f"layers.{i}.attention.wv.weight": (n_kv_heads * dh, dim),
                       f"layers.{i}.attention.wo.weight": (dim, n_heads * dh),
                       f"layers.{i}.feed_forward.w1.weight": (hidden, dim),
                       f"layers.{i}.feed_forward.w2.weight": (dim, hidden),
                       f"layers.{i}.feed_forward.w3.weight": (hidden, dim),
                       f"layers.{i}.attention_norm.weight": (dim,), f"layers.{i}.ffn_norm.weight": (dim,)})
    state = {k: (torch.randn(s, generator=g) * 0.3 + (1.0 if k.endswith("norm.weight") else 0.0)).to(dtype)
             for k, s in shapes.items()}
    path.mkdir(parents=True, exist_ok=True)
    (path / "params.json").write_text(json.dumps(params))
    torch.save(state, path / "consolidated.00.pth")
    return state


def reference(cfg, w, ids=IDS):
    return build("numpy", cfg, w, dtype="float64")(input_ids=ids)["logits"]


def test_meta_layout_imports_with_interleaved_rotary(tmp_path):
    state = meta_dir(tmp_path)
    cfg, w = weights.from_original(tmp_path)
    assert (cfg.kind, cfg.rotary_pairing, cfg.num_heads, cfg.kv_heads, cfg.d_ff, cfg.rope_theta, cfg.rope_scaling) == \
        ("llama", "interleaved", 4, 2, 48, 500000.0, "none")
    np.testing.assert_array_equal(w["layers.1.attention.key.kernel"], state["layers.1.attention.wk.weight"].numpy().T)
    np.testing.assert_array_equal(w["layers.0.feed_forward.gate.kernel"],
                                  state["layers.0.feed_forward.w1.weight"].numpy().T)
    for framework in ("torch", "tf"):  # the interleaved pairing runs the same in every framework
        ours = build(framework, cfg, w, dtype="float64")(input_ids=IDS)["logits"]
        assert compare(framework, ours, reference(cfg, w), TOLERANCES["float64"]).passed


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_interleaved_on_meta_weights_equals_half_split_on_permuted_weights(n_kv_heads, tmp_path):
    """The classic equivalence: Meta rotates pairs (2i, 2i + 1) of its wq, wk; reordering each head's
    q and k features (evens, then odds) and rotating pairs (i, i + Dh/2) gives the same scores. The
    keys permute per *key/value* head: with the query head count instead (a GQA bug) they do not."""
    meta_dir(tmp_path, n_kv_heads=n_kv_heads)
    cfg, w = weights.from_original(tmp_path)
    half_cfg, half_w = weights.permute_rotary(cfg, w)
    assert half_cfg.rotary_pairing == "half"
    meta = reference(cfg, w)
    assert compare("permuted", reference(half_cfg, half_w), meta, TOLERANCES["float64"]).passed
    assert not compare("not permuted", reference(half_cfg, w), meta, TOLERANCES["float32"]).passed
    back_cfg, back_w = weights.permute_rotary(half_cfg, half_w, to="interleaved")
    assert back_cfg == cfg and all(np.array_equal(back_w[k], w[k]) for k in w)
    # transformers stores the permuted weights: its LlamaForCausalLM on them gives Meta's numbers
    weights.to_hf(half_cfg, half_w, tmp_path / "hf")
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").double().eval()
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor(IDS)).logits.numpy()
    assert compare("transformers on permuted weights", theirs, meta, TOLERANCES["float32"]).passed
    if n_kv_heads < cfg.num_heads:  # permute k as if it had num_heads heads: the wrong model
        Dh = cfg.head_dim
        wrong = dict(half_w)
        for i in range(cfg.num_layers):
            k = w[f"layers.{i}.attention.key.kernel"]
            width = k.shape[1] // cfg.num_heads
            order = np.concatenate([np.arange(0, width, 2), np.arange(1, width, 2)])
            wrong[f"layers.{i}.attention.key.kernel"] = k.reshape(-1, cfg.num_heads, width)[..., order].reshape(k.shape)
        assert Dh != width and not compare("k over query heads", reference(half_cfg, wrong), meta,
                                           TOLERANCES["float32"]).passed


def test_llama31_scaled_rope_and_bfloat16_weights(tmp_path):
    """Meta's `use_scaled_rope` (3.1, 3.2) is transformers' llama3 type with its fixed constants; Meta
    ships bfloat16 tensors, read exactly (every bfloat16 is a float32)."""
    state = meta_dir(tmp_path, scaled=True, dtype=torch.bfloat16)
    cfg, w = weights.from_original(tmp_path)
    assert (cfg.rope_scaling, cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
            cfg.rope_original_max_positions) == ("llama3", 8.0, 1.0, 4.0, 8192)
    assert w["embeddings.token.table"].dtype == np.float32
    np.testing.assert_array_equal(w["embeddings.token.table"], state["tok_embeddings.weight"].float().numpy())


def test_meta_directory_errors_name_the_problem(tmp_path):
    with pytest.raises(weights.WeightsError, match=re.escape(f"no original-layout parameters file in {tmp_path}: "
                                                             "expected one of ['params.json']")):
        weights.from_original(tmp_path)
    state = meta_dir(tmp_path)
    torch.save(state, tmp_path / "consolidated.01.pth")
    with pytest.raises(weights.WeightsError, match=r"expected one consolidated.NN file .*consolidated.01.pth"):
        weights.from_original(tmp_path)
    (tmp_path / "consolidated.01.pth").unlink()
    del state["layers.1.attention.wk.weight"]
    torch.save(state, tmp_path / "consolidated.00.pth")
    with pytest.raises(weights.WeightsError, match=r"layers.1.attention.wk.weight"):
        weights.from_original(tmp_path)
