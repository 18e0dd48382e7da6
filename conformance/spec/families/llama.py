"""The LLaMA family: Llama 2 (Touvron et al. 2023), Llama 3 / 3.1 / 3.2 (Meta 2024), Mistral 7B v0.1
(Jiang et al. 2023), Qwen2.5 (Qwen Team 2024), Gemma (Gemma Team 2024) and Gemma 2: one model
(`numpy_ref.llama`), five Hugging Face layouts. The published dimensions below give exactly
`transformers`' parameter counts (`*ForCausalLM.num_parameters()`); llama-tiny is this project's
own small one for fast tests.
"""
from __future__ import annotations

from conformance.core.config import Config
from conformance.spec.entry import Entry, Variant as V
from conformance.spec.family import (Checkpoint, Decoding, Family, KerasHub, Original, Stack, Step, Task,
                                     Walkthrough)
from conformance.spec.inputs import causal_lm_inputs
from conformance.spec.leaves import KERAS_HEADS_IN, KERAS_HEADS_OUT, Leaf

COMMON = dict(kind="llama", norm="rms", feed_forward="gated", position="rotary", activation="silu", norm_first=True,
              causal=True, use_bias=False, dropout=0.0, head="none")


def _llama(layers, width, heads, kv_heads, d_ff, vocab, max_positions, **kw):
    return Config(d_model=width, num_heads=heads, num_kv_heads=kv_heads, d_ff=d_ff, num_layers=layers,
                  vocab_size=vocab, max_positions=max_positions, **{**COMMON, "layer_norm_eps": 1e-5,
                                                                    "tie_embeddings": False, **kw})


LLAMA3_ROPE = dict(rope_theta=500000.0, rope_scaling="llama3", rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                   rope_original_max_positions=8192)
GEMMA = dict(norm="rms", rms_norm_offset=1.0, rms_norm_upcast="all", scale_embeddings=True, activation="gelu_tanh",
             layer_norm_eps=1e-6, tie_embeddings=True, attention_head_dim=256)

PRESETS = {
    "llama-tiny": _llama(2, 128, 4, 2, 352, 1000, 256, checkpoint="llama"),
    "llama2-7b": _llama(32, 4096, 32, 32, 11008, 32000, 4096, checkpoint="llama"),
    "llama3-8b": _llama(32, 4096, 32, 8, 14336, 128256, 8192, rope_theta=500000.0, checkpoint="llama"),
    "llama3.1-8b": _llama(32, 4096, 32, 8, 14336, 128256, 131072, rope_factor=8.0, checkpoint="llama",
                          **LLAMA3_ROPE),
    "llama3.2-1b": _llama(16, 2048, 32, 8, 8192, 128256, 131072, rope_factor=32.0, tie_embeddings=True,
                          checkpoint="llama", **LLAMA3_ROPE),
    "llama3-70b": _llama(80, 8192, 64, 8, 28672, 128256, 8192, rope_theta=500000.0, checkpoint="llama"),
    "mistral-7b": _llama(32, 4096, 32, 8, 14336, 32000, 32768, sliding_window=4096, checkpoint="mistral"),
    "qwen2.5-0.5b": _llama(24, 896, 14, 2, 4864, 151936, 32768, rope_theta=1000000.0, layer_norm_eps=1e-6,
                           use_bias=True, output_bias=False, tie_embeddings=True, checkpoint="qwen2"),
    "gemma-2b": _llama(18, 2048, 8, 1, 16384, 256000, 8192, checkpoint="gemma", **GEMMA),
    "gemma2-2b": _llama(26, 2304, 8, 4, 9216, 256000, 8192, checkpoint="gemma2", sandwich_norm=True,
                        attention_scale=256 ** -0.5, attn_logit_softcap=50.0, final_logit_softcap=30.0,
                        sliding_window=4096, layer_types=("sliding_attention", "full_attention") * 13, **GEMMA),
}

TINY = Config(d_model=32, num_heads=4, num_kv_heads=2, d_ff=48, num_layers=2, vocab_size=97, max_positions=64,
              layer_norm_eps=1e-5, tie_embeddings=False, checkpoint="llama", **COMMON)

# ------------------------------------------------------------------ Hugging Face: five layouts of one model

LINEAR = (Leaf("kernel", "weight", "transpose"), Leaf("bias", "bias"))
RMS = (Leaf("gamma", "weight"),)
ROPE_TYPES = {"default": "none", "linear": "linear", "dynamic": "dynamic", "llama3": "llama3", "yarn": "yarn"}
ROPE_KEYS = {  # Config field -> rope_parameters key, for each type that reads it
    "rope_factor": "factor", "rope_low_freq_factor": "low_freq_factor", "rope_high_freq_factor": "high_freq_factor",
    "rope_original_max_positions": "original_max_position_embeddings", "rope_beta_fast": "beta_fast",
    "rope_beta_slow": "beta_slow", "rope_attention_factor": "attention_factor", "rope_truncate": "truncate"}
ROPE_READS = {"none": (), "linear": ("rope_factor",), "dynamic": ("rope_factor",),
              "llama3": ("rope_factor", "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_positions"),
              "yarn": ("rope_factor", "rope_original_max_positions", "rope_beta_fast", "rope_beta_slow",
                       "rope_attention_factor", "rope_truncate")}


def read_rope(hf: dict) -> dict:
    """Config fields from `rope_parameters` (transformers 5) or the older `rope_scaling` + `rope_theta`."""
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"config.json rope type must be one of {list(ROPE_TYPES)}; received rope_type={kind!r}")
    for key in ("mscale", "mscale_all_dim"):
        if rope.get(key):
            raise ValueError(f"config.json rope_parameters {key} is not implemented here; received {key}={rope[key]!r}")
    out = {"rope_theta": float(theta), "rope_scaling": ROPE_TYPES[kind]}
    for field in ROPE_READS[ROPE_TYPES[kind]]:
        if rope.get(ROPE_KEYS[field]) is not None:
            out[field] = rope[ROPE_KEYS[field]]
    return out


def rope_parameters(cfg: Config) -> dict:
    """The Config's rotary fields as transformers' `rope_parameters` (config.json's, since 5.0); an unset
    original context is the model's own (`max_positions`), as the rotary embedding reads it."""
    kind = next(k for k, v in ROPE_TYPES.items() if v == cfg.rope_scaling)
    rope = {"rope_type": kind, "rope_theta": cfg.rope_theta}
    rope.update({ROPE_KEYS[f]: getattr(cfg, f) for f in ROPE_READS[cfg.rope_scaling] if getattr(cfg, f) is not None})
    if "rope_original_max_positions" in ROPE_READS[cfg.rope_scaling]:
        rope.setdefault("original_max_position_embeddings", cfg.max_positions)
    return rope


def read_common(hf: dict, cls: str) -> dict:
    out = read_rope(hf)
    if hf.get("layer_types"):
        out["layer_types"] = tuple(hf["layer_types"])
    return out


def write_common(cfg: Config, cls: str) -> dict:
    out = {"rope_parameters": rope_parameters(cfg), "attention_dropout": 0.0, "hidden_act": {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh",
                                                                       "gelu": "gelu", "relu": "relu"}[cfg.activation]}
    if cfg.layer_types:
        out["layer_types"] = list(cfg.layer_types)
    return out


def _modules(post_attention: str, feed_forward_norm: str, bias_output=True, sandwich=False) -> dict:
    modules = {
        "embeddings.token": ("{base}embed_tokens", (Leaf("table", "weight"),)),
        "layers.{i}.attention_norm": ("{base}layers.{i}.input_layernorm", RMS),
        "layers.{i}.attention.query": ("{base}layers.{i}.self_attn.q_proj", LINEAR),
        "layers.{i}.attention.key": ("{base}layers.{i}.self_attn.k_proj", LINEAR),
        "layers.{i}.attention.value": ("{base}layers.{i}.self_attn.v_proj", LINEAR),
        "layers.{i}.attention.output": ("{base}layers.{i}.self_attn.o_proj", LINEAR if bias_output else LINEAR[:1]),
        "layers.{i}.feed_forward_norm": ("{base}layers.{i}." + feed_forward_norm, RMS),
        "layers.{i}.feed_forward.gate": ("{base}layers.{i}.mlp.gate_proj", LINEAR),
        "layers.{i}.feed_forward.up": ("{base}layers.{i}.mlp.up_proj", LINEAR),
        "layers.{i}.feed_forward.down": ("{base}layers.{i}.mlp.down_proj", LINEAR),
        "final_norm": ("{base}norm", RMS),
        "lm_head": ("lm_head", LINEAR[:1]),
    }
    if sandwich:
        modules["layers.{i}.attention_output_norm"] = ("{base}layers.{i}." + post_attention, RMS)
        modules["layers.{i}.feed_forward_output_norm"] = ("{base}layers.{i}.post_feedforward_layernorm", RMS)
    return modules


FIELDS = {"d_model": ("hidden_size", 4096), "num_heads": ("num_attention_heads", 32),
          "num_kv_heads": ("num_key_value_heads", None), "d_ff": ("intermediate_size", 11008),
          "num_layers": ("num_hidden_layers", 32), "vocab_size": ("vocab_size", 32000),
          "max_positions": ("max_position_embeddings", 2048), "layer_norm_eps": ("rms_norm_eps", 1e-6),
          "activation": ("hidden_act", "silu"), "attention_head_dim": ("head_dim", None),
          "tie_embeddings": ("tie_word_embeddings", False)}
TIED = {"lm_head.weight": "embeddings.token.table"}  # a tied checkpoint may still carry the duplicate
FIXED = {"qk_norm": False, "rotary_pairing": "half", "rotary_dim": None, "mlp_bias": False, "output_bias": None,
         "sandwich_norm": False, "attn_logit_softcap": None, "final_logit_softcap": None, "causal_alignment": "bottom_right",
         "sliding_window_right": 0}  # what these five layouts cannot express; a layout's own constants override


def _checkpoint(model_type, cls, constants, modules, fields=FIELDS, fixed=None, read=read_common,
                write=write_common) -> Checkpoint:
    constants = {**{k: v for k, v in COMMON.items() if k not in ("activation", "head")}, **FIXED,
                 "checkpoint": model_type, **constants}
    return Checkpoint(
        model_type=model_type, classes={f"{cls}ForCausalLM": "none", f"{cls}Model": "none"},
        base_class=f"{cls}Model", prefix="model.", modules=modules, tied=TIED,
        buffers=("{base}rotary_emb.inv_freq", "{base}embed_tokens.embed_scale"), foreign=(), fields=fields,
        fixed=fixed or {}, read=read, write=write,
        constants={k: v for k, v in constants.items() if k not in fields})  # a field read from config.json is free


def _read_qwen2(hf, cls):
    out = read_common(hf, cls)
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    out["sliding_window"] = window
    if window is not None and not hf.get("layer_types"):  # layers at and above max_window_layers slide
        first = hf.get("max_window_layers", 28)
        out["layer_types"] = tuple("sliding_attention" if i >= first else "full_attention"
                                   for i in range(hf.get("num_hidden_layers", 24)))
    return out


def _write_qwen2(cfg, cls):
    return {**write_common(cfg, cls), "use_sliding_window": cfg.sliding_window is not None,
            "sliding_window": cfg.sliding_window, "max_window_layers": 0}


def _read_gemma2(hf, cls):
    out = read_common(hf, cls)
    out["attention_scale"] = float(hf.get("query_pre_attn_scalar", 256)) ** -0.5
    if not hf.get("layer_types"):  # even layers slide (transformers' default)
        out["layer_types"] = tuple("sliding_attention" if (i + 1) % 2 else "full_attention"
                                   for i in range(hf.get("num_hidden_layers", 26)))
    return out


def _write_gemma2(cfg, cls):
    scale = cfg.scale  # query_pre_attn_scalar = scale^-2: 256 for Gemma 2's 2B and 9B
    out = write_common(cfg, cls)
    out["hidden_activation"] = out.pop("hidden_act")
    scalar = round(scale ** -2, 6)
    return {**out, "query_pre_attn_scalar": int(scalar) if scalar == int(scalar) else scalar}


def _read_mistral(hf, cls):
    return {**read_common(hf, cls), "sliding_window": hf.get("sliding_window", 4096)}  # null: no window


def _write_mistral(cfg, cls):
    return {**write_common(cfg, cls), "sliding_window": cfg.sliding_window}


LLAMA_CONSTANTS = {"rms_norm_offset": 0.0, "rms_norm_upcast": "statistic", "scale_embeddings": False}
GEMMA_CONSTANTS = {"rms_norm_offset": 1.0, "rms_norm_upcast": "all", "scale_embeddings": True}
CHECKPOINTS = (
    _checkpoint("llama", "Llama", LLAMA_CONSTANTS,
                _modules("post_attention_layernorm", "post_attention_layernorm"),
                fields={**FIELDS, "use_bias": ("attention_bias", False), "mlp_bias": ("mlp_bias", False)}),
    _checkpoint("mistral", "Mistral", {**LLAMA_CONSTANTS, "use_bias": False},
                _modules("post_attention_layernorm", "post_attention_layernorm"),
                read=_read_mistral, write=_write_mistral),
    _checkpoint("qwen2", "Qwen2", {**LLAMA_CONSTANTS, "use_bias": True, "output_bias": False},
                _modules("post_attention_layernorm", "post_attention_layernorm", bias_output=False),
                fields={k: v for k, v in FIELDS.items() if k != "attention_head_dim"},  # Qwen2Config has no head_dim
                read=_read_qwen2, write=_write_qwen2),
    _checkpoint("gemma", "Gemma", GEMMA_CONSTANTS, _modules("post_attention_layernorm", "post_attention_layernorm"),
                fields={**FIELDS, "use_bias": ("attention_bias", False), "tie_embeddings": ("tie_word_embeddings", True),
                        "activation": ("hidden_act", "gelu_pytorch_tanh"), "attention_head_dim": ("head_dim", 256)},
                fixed={"use_bidirectional_attention": False}),
    _checkpoint("gemma2", "Gemma2", {**GEMMA_CONSTANTS, "sandwich_norm": True},
                _modules("post_attention_layernorm", "pre_feedforward_layernorm", sandwich=True),
                fields={**FIELDS, "use_bias": ("attention_bias", False), "tie_embeddings": ("tie_word_embeddings", True),
                        "activation": ("hidden_activation", "gelu_pytorch_tanh"),
                        "attention_head_dim": ("head_dim", 256), "sliding_window": ("sliding_window", 4096),
                        "attn_logit_softcap": ("attn_logit_softcapping", 50.0),
                        "final_logit_softcap": ("final_logit_softcapping", 30.0)},
                fixed={"use_bidirectional_attention": False}, read=_read_gemma2, write=_write_gemma2),
)

# ------------------------------------------------------------------ Meta's original release (interleaved rotary)

META_MODULES = {
    "embeddings.token": ("tok_embeddings", (Leaf("table", "weight"),)),
    "layers.{i}.attention_norm": ("layers.{i}.attention_norm", RMS),
    "layers.{i}.attention.query": ("layers.{i}.attention.wq", LINEAR[:1]),
    "layers.{i}.attention.key": ("layers.{i}.attention.wk", LINEAR[:1]),
    "layers.{i}.attention.value": ("layers.{i}.attention.wv", LINEAR[:1]),
    "layers.{i}.attention.output": ("layers.{i}.attention.wo", LINEAR[:1]),
    "layers.{i}.feed_forward_norm": ("layers.{i}.ffn_norm", RMS),
    "layers.{i}.feed_forward.gate": ("layers.{i}.feed_forward.w1", LINEAR[:1]),
    "layers.{i}.feed_forward.down": ("layers.{i}.feed_forward.w2", LINEAR[:1]),
    "layers.{i}.feed_forward.up": ("layers.{i}.feed_forward.w3", LINEAR[:1]),
    "final_norm": ("norm", RMS),
    "lm_head": ("output", LINEAR[:1]),
}


def read_meta(params: dict) -> dict:
    """params.json -> Config fields. Meta's code rotates interleaved pairs (2i, 2i + 1) and, with
    `use_scaled_rope` (Llama 3.1 and 3.2), scales the frequencies as transformers' "llama3" type with
    factor 8, low 1, high 4 over an original 8192 context (hard-coded in its `apply_scaling`). The
    feed-forward width is read off the weights (`d_ff` here is refined by `from_original`)."""
    dim, heads = params["dim"], params["n_heads"]
    out = dict(COMMON, d_model=dim, num_heads=heads, num_kv_heads=params.get("n_kv_heads") or heads,
               num_layers=params["n_layers"], vocab_size=params["vocab_size"], layer_norm_eps=params.get("norm_eps", 1e-5),
               rope_theta=float(params.get("rope_theta", 10000.0)), rotary_pairing="interleaved", tie_embeddings=False,
               d_ff=params.get("hidden_dim", 4 * dim), checkpoint="llama",
               max_positions=131072 if params.get("use_scaled_rope") else (8192 if params.get("rope_theta", 1e4) >= 5e5
                                                                          else 4096))
    if params.get("use_scaled_rope"):
        out.update(rope_scaling="llama3", rope_factor=float(params.get("rope_scale_factor", 8.0)),
                   rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_max_positions=8192)
    return out


ORIGINALS = (Original("meta", "params.json", META_MODULES, read_meta),)

# ------------------------------------------------------------------------------ keras-hub

KERAS_TABLE = (Leaf("table", "embeddings"),)
KERAS_KERNEL = (Leaf("kernel", "kernel"),)
SCALE = (Leaf("gamma", "scale"),)


def _keras_llama_modules(bias=False) -> dict:
    heads_in = KERAS_HEADS_IN if bias else KERAS_HEADS_IN[:1]
    layer = "transformer_layer_{i}"
    return {
        "embeddings.token": ("token_embedding", KERAS_TABLE),
        "lm_head": ("token_embedding", (Leaf("kernel", "reverse_embeddings"),)),  # (D, V): the untied head
        "layers.{i}.attention.query": (f"{layer}/self_attention/query", heads_in),
        "layers.{i}.attention.key": (f"{layer}/self_attention/key", heads_in),
        "layers.{i}.attention.value": (f"{layer}/self_attention/value", heads_in),
        "layers.{i}.attention.output": (f"{layer}/self_attention/attention_output", KERAS_HEADS_OUT[:1]),
        "layers.{i}.attention_norm": (f"{layer}/self_attention_layernorm", SCALE),
        "layers.{i}.feed_forward.gate": (f"{layer}/feedforward_gate_dense", KERAS_KERNEL),
        "layers.{i}.feed_forward.up": (f"{layer}/feedforward_intermediate_dense", KERAS_KERNEL),
        "layers.{i}.feed_forward.down": (f"{layer}/feedforward_output_dense", KERAS_KERNEL),
        "layers.{i}.feed_forward_norm": (f"{layer}/feedforward_layernorm", SCALE),
        "final_norm": ("sequence_output_layernorm", SCALE),
    }


HEADS_FIRST = (Leaf("kernel", "kernel", "heads_first_in"),)
GEMMA_BLOCK = "decoder_block_{i}"
KERAS_GEMMA_MODULES = {
    "embeddings.token": ("token_embedding", KERAS_TABLE),
    "layers.{i}.attention_norm": (f"{GEMMA_BLOCK}/pre_attention_norm", SCALE),
    "layers.{i}.attention.query": (f"{GEMMA_BLOCK}/attention/query", HEADS_FIRST),
    "layers.{i}.attention.key": (f"{GEMMA_BLOCK}/attention/key", HEADS_FIRST),
    "layers.{i}.attention.value": (f"{GEMMA_BLOCK}/attention/value", HEADS_FIRST),
    "layers.{i}.attention.output": (f"{GEMMA_BLOCK}/attention/attention_output", KERAS_HEADS_OUT[:1]),
    "layers.{i}.attention_output_norm": (f"{GEMMA_BLOCK}/post_attention_norm", SCALE),
    "layers.{i}.feed_forward_norm": (f"{GEMMA_BLOCK}/pre_ffw_norm", SCALE),
    "layers.{i}.feed_forward.gate": (f"{GEMMA_BLOCK}/ffw_gating", KERAS_KERNEL),
    "layers.{i}.feed_forward.up": (f"{GEMMA_BLOCK}/ffw_gating_2", KERAS_KERNEL),
    "layers.{i}.feed_forward.down": (f"{GEMMA_BLOCK}/ffw_linear", KERAS_KERNEL),
    "layers.{i}.feed_forward_output_norm": (f"{GEMMA_BLOCK}/post_ffw_norm", SCALE),
    "final_norm": ("final_normalization", SCALE),
}


def _llama_dims(cfg):
    dims = dict(vocabulary_size=cfg.vocab_size, num_layers=cfg.num_layers, num_query_heads=cfg.num_heads,
                hidden_dim=cfg.d_model, intermediate_dim=cfg.d_ff, num_key_value_heads=cfg.kv_heads,
                rope_max_wavelength=cfg.rope_theta, layer_norm_epsilon=cfg.layer_norm_eps, dropout=0,
                tie_word_embeddings=cfg.tie_embeddings)
    if cfg.rope_scaling == "llama3":
        dims.update(rope_frequency_adjustment_factor=cfg.rope_factor, rope_low_freq_factor=cfg.rope_low_freq_factor,
                    rope_high_freq_factor=cfg.rope_high_freq_factor,
                    rope_pretraining_sequence_length=cfg.rope_original_max_positions or cfg.max_positions)
    return dims


def _common_dims(cfg):
    return dict(vocabulary_size=cfg.vocab_size, num_layers=cfg.num_layers, num_query_heads=cfg.num_heads,
                num_key_value_heads=cfg.kv_heads, hidden_dim=cfg.d_model, intermediate_dim=cfg.d_ff,
                rope_max_wavelength=cfg.rope_theta, layer_norm_epsilon=cfg.layer_norm_eps, dropout=0)


def _gemma_dims(cfg):
    return dict(vocabulary_size=cfg.vocab_size, num_layers=cfg.num_layers, num_query_heads=cfg.num_heads,
                num_key_value_heads=cfg.kv_heads, hidden_dim=cfg.d_model, intermediate_dim=2 * cfg.d_ff,  # two halves
                head_dim=cfg.head_dim, use_post_ffw_norm=cfg.sandwich_norm, use_post_attention_norm=cfg.sandwich_norm,
                attention_logit_soft_cap=cfg.attn_logit_softcap, final_logit_soft_cap=cfg.final_logit_softcap,
                use_sliding_window_attention=cfg.sliding_window is not None,
                sliding_window_size=cfg.sliding_window or 4096, layer_norm_epsilon=cfg.layer_norm_eps, dropout=0)


GEMMA_NUMERICS = {"attention_scale": lambda cfg: (cfg.attention_scale if cfg.scale == cfg.head_dim ** -0.5
                                                  else cfg.head_dim ** -0.5),  # keras-hub: always 1/sqrt(head_dim)
                  "layer_norm_eps": 1e-6, "rotary_float32": True}
KERAS_INPUTS = {"input_ids": ("token_ids", None), "attention_mask": ("padding_mask", "ones")}
NO_EXTRAS = {"attention_head_dim": None, "mlp_bias": False, "qk_norm": False, "sandwich_norm": False,
             "attn_logit_softcap": None, "final_logit_softcap": None, "rotary_pairing": "half", "rotary_dim": None,
             "attention_impl": "reference"}
KERAS_HUB = (
    # keras-hub's RMSNorm scales in float32 before the cast back (transformers' Llama casts first): rms_norm_upcast
    KerasHub("LlamaBackbone", _keras_llama_modules(), {"rms_norm_upcast": "all", "rotary_float32": True},
             {**NO_EXTRAS, "use_bias": False, "sliding_window": None}, _llama_dims, KERAS_INPUTS,
             {"last_hidden_state": None}, tied_logits=True, model_type="llama"),
    KerasHub("MistralBackbone", _keras_llama_modules(),
             {"rms_norm_upcast": "all", "rotary_float32": True, "tie_embeddings": False},
             {**NO_EXTRAS, "use_bias": False, "rope_scaling": "none", "layer_types": ()},
             lambda cfg: {**_common_dims(cfg), "sliding_window": cfg.sliding_window or cfg.max_positions},
             KERAS_INPUTS, {"last_hidden_state": None}, tied_logits=True, model_type="mistral"),
    KerasHub("QwenBackbone", _keras_llama_modules(bias=True), {"rms_norm_upcast": "all", "rotary_float32": True},
             {**NO_EXTRAS, "use_bias": True, "output_bias": False, "rope_scaling": "none", "layer_types": ()},
             lambda cfg: {**_common_dims(cfg), "tie_word_embeddings": cfg.tie_embeddings,
                          "use_sliding_window_attention": cfg.sliding_window is not None,
                          "sliding_window_size": cfg.sliding_window or 32768},
             KERAS_INPUTS, {"last_hidden_state": None}, tied_logits=True, model_type="qwen2"),
    # GemmaBackbone: query_head_dim_normalize is hard-coded True in its blocks (1/sqrt(head_dim): Gemma 2 27B's
    # query_pre_attn_scalar cannot be expressed), and its blocks' norms keep epsilon 1e-6 whatever is asked.
    KerasHub("GemmaBackbone", KERAS_GEMMA_MODULES,
             GEMMA_NUMERICS,
             {"use_bias": False, "mlp_bias": False, "qk_norm": False, "rotary_pairing": "half", "rotary_dim": None,
              "rope_scaling": "none", "rope_theta": 10000.0, "tie_embeddings": True, "attention_impl": "reference"},
             _gemma_dims, KERAS_INPUTS, {"last_hidden_state": None}, tied_logits=True, model_type="gemma"),
    KerasHub("GemmaBackbone", KERAS_GEMMA_MODULES,
             GEMMA_NUMERICS,
             {"use_bias": False, "mlp_bias": False, "qk_norm": False, "rotary_pairing": "half", "rotary_dim": None,
              "rope_scaling": "none", "rope_theta": 10000.0, "tie_embeddings": True, "attention_impl": "reference"},
             _gemma_dims, KERAS_INPUTS, {"last_hidden_state": None}, tied_logits=True, model_type="gemma2"),
)

# ------------------------------------------------------------------------------ walkthrough

WALKTHROUGH = Walkthrough(
    "A one-layer Llama (D = 16, 4 query heads sharing 2 key/value heads, Dh = 4, rotary, RMSNorm, SwiGLU) on 4 "
    "tokens, the 4th padding.",
    dict(d_model=16, num_heads=4, num_kv_heads=2, d_ff=24, vocab_size=11, max_positions=16, num_layers=1),
    {"input_ids": [[2, 7, 7, 5]], "attention_mask": [[1, 1, 1, 0]], "position_ids": [[0, 1, 2, 3]]},
    (Step("embeddings.output", "Token rows; no position rows: positions enter as a rotation of q and k."),
     Step("layers.0.attention_norm.output", "RMSNorm: each row divided by its root mean square, times g; no "
                                            "mean is subtracted and there is no beta."),
     Step("layers.0.attention.q", "Four query heads of width 4."),
     Step("layers.0.attention.k", "Two key heads: each serves two query heads (grouped-query attention)."),
     Step("layers.0.attention.rotary.q", "q rotated: feature pair (i, i + 2) of the token at position m turns by m "
                                         "theta_i.", "transformers' rotate_half layout."),
     Step("layers.0.attention.probs", "Causal and padded; the scores of a rotated q and k depend on m - n only."),
     Step("layers.0.feed_forward.gated", "SwiGLU: silu(x W_gate) * (x W_up), elementwise."),
     Step("layers.0.output", "h + Attention(RMS(h)), then h + FFN(RMS(h))."),
     Step("logits", "RMS_final(h) W_head: an untied head here (Llama 3.2 and Gemma tie it).")),
    shows=("num_layers", "num_heads", "num_kv_heads", "head_dim", "d_ff", "activation", "layer_norm_eps", "rope_theta",
           "vocab_size"),
    transformers_steps={"embeddings.output": ("hidden_states", 0), "layers.0.attention.probs": ("attentions", 0),
                        "final_norm.output": ("hidden_states", -1), "logits": ("logits", None)},
    transformers_dtype="float32",
    transformers_why="its rotary cos and sin are float32 in every dtype, 1e-7 off float64's",
)

STACK = Stack(
    layers="layers",
    embedding_call=lambda x: ((x["input_ids"],), {}),
    layer_call=lambda x: {"mask": x.get("attention_mask"), "position_ids": x.get("position_ids")},
    layer_options=lambda cfg, i: {"sliding": cfg.sliding(i)},  # as Llama builds layer i: Gemma 2 alternates
    rows={"embeddings.token.table": "input_ids"},
    vocabulary={"embeddings.token.table": 0, "lm_head.kernel": 1},
    head_reads=lambda cfg: ("embeddings.token.table",) if cfg.tie_embeddings else (),
    logits=("lm_head.output", "uncapped_logits", "logits"),
)

FAMILY = Family(
    entry=Entry("llama", "Llama", TINY, causal_lm_inputs,
                {"default": V(),
                 "tied": V({"tie_embeddings": True}),
                 "multi_query": V({"num_kv_heads": 1}),
                 "left_padded": V(options={"left_pad": True}),
                 "llama3_rope": V({"rope_scaling": "llama3", "rope_factor": 8.0, "rope_theta": 500000.0,
                                   "rope_original_max_positions": 16}),
                 "mistral": V({"sliding_window": 3, "checkpoint": "mistral"}),
                 "qwen2": V({"use_bias": True, "output_bias": False, "rope_theta": 1000000.0, "tie_embeddings": True,
                             "checkpoint": "qwen2"}),
                 "gemma": V({**GEMMA, "attention_head_dim": 16, "num_kv_heads": 1, "checkpoint": "gemma"}),
                 "gemma2": V({**GEMMA, "attention_head_dim": 16, "sandwich_norm": True, "attention_scale": 16 ** -0.5,
                              "attn_logit_softcap": 5.0, "final_logit_softcap": 3.0, "sliding_window": 3,
                              "layer_types": ("sliding_attention", "full_attention"), "checkpoint": "gemma2"}),
                 "qk_norm": V({"qk_norm": True}),
                 "fused": V({"attention_impl": "fused"}),
                 "tiled": V({"attention_impl": "tiled", "attention_block_q": 2, "attention_block_k": 3})},
                is_model=True),
    presets=PRESETS,
    tasks={"causal_lm": Task("none")},
    pretraining="causal_lm",
    generates=True,
    decoding=Decoding(position_ids=True),  # rotary positions: cumsum(mask) - 1, so a left-padded prompt works
    checkpoints=CHECKPOINTS,
    originals=ORIGINALS,
    keras_hub=KERAS_HUB,
    walkthrough=WALKTHROUGH,
    base_preset="llama3.2-1b",
    stack=STACK,
)
