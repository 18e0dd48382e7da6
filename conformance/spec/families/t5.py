"""T5 (Raffel et al. 2020): t5-small, t5-base and t5-large as released (T5 1.0: ReLU, the head tied to
the token table and rescaled by D^-0.5), and Flan-T5 (Chung et al. 2022) small and base, the T5 1.1
layout (gated GELU, an untied head, no rescale, d_kv free of D / H). The published dimensions give
exactly `transformers`' parameter counts (`T5ForConditionalGeneration.num_parameters()`, with
Flan-T5's head untied: see `_adjust`); t5-tiny is this project's own small one.

transformers 5.24 reads a T5 config.json its own way, and this table reads it the same:
- `T5Config` always sets `tie_word_embeddings=True` and keeps the old flag only as
  `scale_decoder_outputs` (the D^-0.5 rescale): a hub T5 1.1 file says `tie_word_embeddings: false`, a
  file 5.24 wrote says `tie_word_embeddings: true, scale_decoder_outputs: false`. The rescale is
  `scale_decoder_outputs` where present, else `tie_word_embeddings`; whether the head is the token
  table is decided by the tensors (`_refine`), as `from_pretrained` unties only a differing
  `lm_head.weight`.
- `feed_forward_proj` is "{act}" or "gated-{act}", and "gated-gelu" means the tanh GELU (gelu_new).
- `T5Config` has no `decoder_start_token_id` (hub files carry 0, the pad id): it is written here.
"""
from __future__ import annotations

import numpy as np

from conformance.core.config import Config
from conformance.spec.entry import Entry, Variant as V
from conformance.spec.family import (HF_ACTIVATIONS, Checkpoint, Decoding, Family, KerasHub, Step, Task,
                                     Walkthrough)
from conformance.spec.inputs import seq2seq_inputs
from conformance.spec.leaves import Leaf

COMMON = dict(kind="t5", norm="rms", layer_norm_eps=1e-6, rms_norm_upcast="statistic", norm_first=True,
              use_bias=False, attention_scale=1.0, position="relative", share_embeddings=True, activation="relu")
V1_1 = dict(feed_forward="gated", activation="gelu_tanh", tie_embeddings=False, scale_logits=False)


def _t5(layers, width, heads, d_ff, **kw):
    return Config(d_model=width, num_heads=heads, attention_head_dim=64, d_ff=d_ff, num_layers=layers,
                  num_decoder_layers=layers, vocab_size=32128, max_positions=512, dropout=0.1,
                  **{**COMMON, "tie_embeddings": True, "scale_logits": True, **kw})


PRESETS = {
    "t5-tiny": Config(d_model=64, num_heads=4, attention_head_dim=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                      vocab_size=1000, max_positions=512, tie_embeddings=True, scale_logits=True, **COMMON),
    "t5-small": _t5(6, 512, 8, 2048),
    "t5-base": _t5(12, 768, 12, 3072),
    "t5-large": _t5(24, 1024, 16, 4096),
    "flan-t5-small": _t5(8, 512, 6, 1024, **V1_1),
    "flan-t5-base": _t5(12, 768, 12, 2048, **V1_1),
}

# The registry's tiny T5: H Dh = 24 != D = 32 (d_kv is free), more decoder layers than encoder ones, and 8
# buckets reaching 16 so that 9-token inputs use the logarithmic buckets (32 / 128 need 8 and 16 apart).
TINY = Config(d_model=32, num_heads=4, attention_head_dim=6, d_ff=64, num_layers=2, num_decoder_layers=3,
              vocab_size=97, max_positions=64, relative_buckets=8, relative_max_distance=16, dropout=0.1,
              tie_embeddings=True, scale_logits=True, **COMMON)

# ------------------------------------------------------------------ Hugging Face

LINEAR = (Leaf("kernel", "weight", "transpose"),)
RMS = (Leaf("gamma", "weight"),)
TABLE = (Leaf("table", "weight"),)
FEED_FORWARD = {"inner": "wi", "outer": "wo", "gate": "wi_0", "up": "wi_1", "down": "wo"}  # ReLU's, gated's


def _attention(ours, theirs):
    return {f"{ours}.{p}": (f"{theirs}.{p[0]}", LINEAR) for p in ("query", "key", "value", "output")}


def _feed_forward(ours, theirs):
    return {f"{ours}.{p}": (f"{theirs}.DenseReluDense.{hf}", LINEAR) for p, hf in FEED_FORWARD.items()}


MODULES = {
    "token_embedding": ("shared", TABLE),
    "encoder_position": ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias", TABLE),
    **_attention("encoder.{i}.attention", "encoder.block.{i}.layer.0.SelfAttention"),
    "encoder.{i}.attention_norm": ("encoder.block.{i}.layer.0.layer_norm", RMS),
    **_feed_forward("encoder.{i}.feed_forward", "encoder.block.{i}.layer.1"),
    "encoder.{i}.feed_forward_norm": ("encoder.block.{i}.layer.1.layer_norm", RMS),
    "encoder_norm": ("encoder.final_layer_norm", RMS),
    "decoder_position": ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias", TABLE),
    **_attention("decoder.{i}.self_attention", "decoder.block.{i}.layer.0.SelfAttention"),
    "decoder.{i}.self_attention_norm": ("decoder.block.{i}.layer.0.layer_norm", RMS),
    **_attention("decoder.{i}.cross_attention", "decoder.block.{i}.layer.1.EncDecAttention"),
    "decoder.{i}.cross_attention_norm": ("decoder.block.{i}.layer.1.layer_norm", RMS),
    **_feed_forward("decoder.{i}.feed_forward", "decoder.block.{i}.layer.2"),
    "decoder.{i}.feed_forward_norm": ("decoder.block.{i}.layer.2.layer_norm", RMS),
    "decoder_norm": ("decoder.final_layer_norm", RMS),
    "lm_head": ("lm_head", LINEAR),
}
FIELDS = {"d_model": ("d_model", 512), "num_heads": ("num_heads", 8), "attention_head_dim": ("d_kv", 64),
          "d_ff": ("d_ff", 2048), "num_layers": ("num_layers", 6), "vocab_size": ("vocab_size", 32128),
          "max_positions": ("n_positions", 512), "layer_norm_eps": ("layer_norm_epsilon", 1e-6),
          "relative_buckets": ("relative_attention_num_buckets", 32),
          "relative_max_distance": ("relative_attention_max_distance", 128), "dropout": ("dropout_rate", 0.1),
          "tie_embeddings": ("tie_word_embeddings", True)}
T5_ACTIVATIONS = {**HF_ACTIVATIONS, "gated-gelu": "gelu_tanh"}  # "gated-gelu" is transformers' gelu_new


def feed_forward_proj(value: str) -> dict:
    """config.json's feed_forward_proj ("relu", "gated-gelu", "gated-silu", ...) -> Config fields."""
    parts = value.split("-")
    act = "gated-gelu" if value == "gated-gelu" else parts[-1]
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or act not in T5_ACTIVATIONS:
        raise ValueError(f"config.json feed_forward_proj must be '{{act}}' or 'gated-{{act}}' with act one of "
                         f"{sorted(HF_ACTIVATIONS)}; received feed_forward_proj={value!r}")
    return {"feed_forward": "gated" if len(parts) == 2 else "standard", "activation": T5_ACTIVATIONS[act]}


def _read(hf: dict, cls: str) -> dict:
    tied = hf.get("tie_word_embeddings", True) is not False
    out = {**feed_forward_proj(hf.get("feed_forward_proj") or "relu"),
           "scale_logits": bool(hf.get("scale_decoder_outputs", tied)), "tie_embeddings": tied,
           "num_decoder_layers": hf.get("num_decoder_layers") or hf.get("num_layers", 6)}
    return out


def _write(cfg: Config, cls: str) -> dict:
    gated = cfg.feed_forward == "gated"
    if gated and cfg.activation == "gelu":
        raise ValueError("Config.activation must not be 'gelu' (erf) with feed_forward='gated' for a T5 config.json: "
                         "its 'gated-gelu' is the tanh form (gelu_new) and nothing spells the erf one; received "
                         "activation='gelu'")
    act = "gelu" if gated and cfg.activation == "gelu_tanh" else {"gelu_tanh": "gelu_new"}.get(cfg.activation,
                                                                                             cfg.activation)
    return {"num_decoder_layers": cfg.num_decoder_layers, "feed_forward_proj": ("gated-" if gated else "") + act,
            "scale_decoder_outputs": cfg.scale_logits, "decoder_start_token_id": 0, "pad_token_id": 0,
            "eos_token_id": 1, "is_encoder_decoder": True}


def _refine(cfg: Config, tensors: dict, prefix: str) -> dict:
    """The head is the token table unless the file holds an `lm_head.weight` of its own that differs."""
    if cfg.head == "encoder":
        return {}
    head, table = tensors.get("lm_head.weight"), tensors.get("shared.weight")
    return {"tie_embeddings": head is None or (table is not None and np.array_equal(head, table))}


def _adjust(model, cfg: Config):
    """transformers 5.24's T5 built from a config always ties lm_head to the token table; T5 1.1's is its own."""
    if not cfg.tie_embeddings and hasattr(model, "lm_head"):
        import torch
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight))
    return model


HF = Checkpoint(
    model_type="t5",
    classes={"T5ForConditionalGeneration": "none", "T5EncoderModel": "encoder"},
    base_class="T5Model", prefix="", modules=MODULES,
    tied={"encoder.embed_tokens.weight": "token_embedding.table", "decoder.embed_tokens.weight": "token_embedding.table",
          "lm_head.weight": "token_embedding.table"},
    buffers=(), foreign=(), fields=FIELDS, fixed={"is_decoder": False},
    constants={k: v for k, v in COMMON.items() if k not in FIELDS and k != "activation"} | {
        "rms_norm_offset": 0.0, "causal": False, "mlp_bias": False, "num_kv_heads": None, "qk_norm": False,
        "sandwich_norm": False, "sliding_window": None, "attn_logit_softcap": None, "final_logit_softcap": None,
        "scale_embeddings": False, "position_offset": 0, "logits_bias": False, "output_bias": None},
    read=_read, write=_write, refine=_refine, adjust=_adjust,
    hidden_states={"encoder_hidden_states": ("token_embedding.output", "encoder.{i}.output", "encoder_norm.output"),
                   "decoder_hidden_states": ("token_embedding.output#1", "decoder.{i}.output", "decoder_norm.output"),
                   "hidden_states": ("token_embedding.output", "encoder.{i}.output", "encoder_norm.output")},
)

# ------------------------------------------------------------------ keras-hub


def _keras_attention(ours, theirs):
    return {f"{ours}.{p}": (f"{theirs}.{p}_projector", (Leaf("kernel", "kernel"),))
            for p in ("query", "key", "value", "output")}


def _keras_layer(stack, i="{i}"):
    """One T5TransformerLayer, reached by attributes (`@`): its norms' variable paths carry a global counter."""
    layer = f"@{stack}_transformer_layers.{i}"
    kernel, gamma = (Leaf("kernel", "kernel"),), (Leaf("gamma", "weight"),)
    ours = "encoder.{i}.attention" if stack == "encoder" else "decoder.{i}.self_attention"
    modules = {**_keras_attention(ours, f"{layer}.self_attention"),
               ours.replace("attention", "attention_norm"): (f"{layer}.self_attention_layer_norm", gamma),
               f"{stack}.{{i}}.feed_forward.inner": (f"{layer}.input_projector", kernel),
               f"{stack}.{{i}}.feed_forward.outer": (f"{layer}.output_projector", kernel),
               f"{stack}.{{i}}.feed_forward.gate": (f"{layer}.input_projector", kernel),  # the activated one
               f"{stack}.{{i}}.feed_forward.up": (f"{layer}.gate_projector", kernel),
               f"{stack}.{{i}}.feed_forward.down": (f"{layer}.output_projector", kernel),
               f"{stack}.{{i}}.feed_forward_norm": (f"{layer}.layer_norm", gamma),
               f"{stack}_position": (f"@{stack}_transformer_layers.0.self_attention", (Leaf("table", "relative_attention_bias"),)),
               f"{stack}_norm": (f"@{stack}_layer_norm", gamma)}
    if stack == "decoder":
        modules.update(_keras_attention("decoder.{i}.cross_attention", f"{layer}.cross_attention"))
        modules["decoder.{i}.cross_attention_norm"] = (f"{layer}.cross_attention_layer_norm", gamma)
    return modules


KERAS_HUB = KerasHub(
    backbone="T5Backbone",
    modules={"token_embedding": ("@token_embedding", (Leaf("table", "embeddings"),)),
             "lm_head": ("@token_embedding", (Leaf("kernel", "reverse_embeddings"),)),  # (D, V): the untied head
             **_keras_layer("encoder"), **_keras_layer("decoder")},
    # T5LayerNorm computes in the input dtype (transformers: the statistic in float32): one number in float32
    numerics={"rms_norm_upcast": "none"},
    # 32 buckets reaching 128 are hard-coded; one num_layers builds both stacks; T5Seq2SeqLM rescales iff tied
    required={"relative_buckets": 32, "relative_max_distance": 128, "num_decoder_layers": lambda cfg: cfg.num_layers,
              "scale_logits": lambda cfg: cfg.tie_embeddings, "head": "none", "attention_impl": "reference"},
    dims=lambda cfg: dict(vocabulary_size=cfg.vocab_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                          hidden_dim=cfg.d_model, intermediate_dim=cfg.d_ff, key_value_dim=cfg.head_dim, dropout=0.0,
                          activation={"gelu_tanh": "keras_hub>gelu_approximate"}.get(cfg.activation, cfg.activation),
                          use_gated_activation=cfg.feed_forward == "gated", layer_norm_epsilon=cfg.layer_norm_eps,
                          tie_embedding_weights=cfg.tie_embeddings),
    inputs={"input_ids": ("encoder_token_ids", None), "attention_mask": ("encoder_padding_mask", "ones"),
            "decoder_input_ids": ("decoder_token_ids", None, "decoder_input_ids"),
            "decoder_attention_mask": ("decoder_padding_mask", "ones", "decoder_input_ids")},
    outputs={"encoder_last_hidden_state": "encoder_sequence_output", "last_hidden_state": "decoder_sequence_output"},
    tied_logits=True,
)

# ------------------------------------------------------------------ walkthrough

WALKTHROUGH = Walkthrough(
    "A one-layer T5 1.0 (D = 8, 2 heads of 4, ReLU, the head tied and rescaled), 8 buckets reaching 16, a source "
    "of 5 tokens (the 5th padding), a target of 3 starting with the decoder start token 0.",
    dict(d_model=8, num_heads=2, attention_head_dim=4, d_ff=16, vocab_size=11, max_positions=16, num_layers=1,
         num_decoder_layers=1, relative_buckets=8, relative_max_distance=16),
    {"input_ids": [[2, 7, 7, 5, 3]], "attention_mask": [[1, 1, 1, 1, 0]], "decoder_input_ids": [[0, 4, 9]],
     "decoder_attention_mask": [[1, 1, 1]]},
    (Step("token_embedding.output", "Token rows of the one shared table; nothing added: no position rows, no scale."),
     Step("encoder_position.buckets", "Each (query, key) pair's bucket, bidirectional: 4 buckets a direction, keys "
                                      "after the query in 4..7; offsets 0 and 1 exact, 2..15 logarithmic.",
          "transformers: T5Attention._relative_position_bucket."),
     Step("encoder_position.output", "The encoder's bias, one learned scalar per head and bucket, (1, H, S, S): "
                                     "computed once, added in every encoder layer."),
     Step("encoder.0.attention_norm.output", "T5's layer norm: RMSNorm, x / sqrt(mean(x^2) + eps) * g, no mean "
                                             "subtracted, no beta (tmirror explain rms_norm holds it to "
                                             "transformers' T5LayerNorm).",
          "transformers' T5LayerNorm squares x in float32 whatever the dtype: held to the float32 row."),
     Step("encoder.0.attention.scores", "q k^T with no 1/sqrt(Dh): T5 folded the scale into W_q's initialization."),
     Step("encoder.0.attention.biased", "The scores plus the relative position bias."),
     Step("encoder.0.attention.probs", "Softmax over the keys; the padded key is 0."),
     Step("encoder_norm.output", "The encoder's final RMSNorm: the memory every cross-attention reads."),
     Step("decoder_position.buckets", "Causal buckets: the 8 all look back (a later key shares offset 0's, and is "
                                      "masked anyway)."),
     Step("decoder.0.self_attention.probs", "Causal self-attention over the target, with the decoder's own bias."),
     Step("decoder.0.cross_attention.probs", "Target over source: no position bias here; the padded source is 0."),
     Step("decoder_norm.output", "The decoder's final RMSNorm: the last hidden state."),
     Step("logits", "(h D^-0.5) E^T: the head is the token table, its input rescaled (T5 1.0; 1.1 and Flan-T5 have "
                    "an untied head and no rescale).")),
    shows=("num_layers", "num_decoder_layers", "num_heads", "head_dim", "d_ff", "activation", "layer_norm_eps",
           "relative_buckets", "relative_max_distance", "attention_scale", "scale_logits", "vocab_size"),
    transformers_steps={"token_embedding.output": ("encoder_hidden_states", 0),
                        "encoder.0.attention.probs": ("encoder_attentions", 0),
                        "encoder_norm.output": ("encoder_last_hidden_state", None),
                        "decoder.0.self_attention.probs": ("decoder_attentions", 0),
                        "decoder.0.cross_attention.probs": ("cross_attentions", 0),
                        "decoder_norm.output": ("decoder_hidden_states", -1), "logits": ("logits", None)},
    transformers_dtype="float32",
    transformers_why="its T5LayerNorm squares x in float32 in every dtype, 1e-7 off float64's",
)

FAMILY = Family(
    entry=Entry("t5", "T5", TINY, seq2seq_inputs,
                {"default": V(),
                 "published_buckets": V({"relative_buckets": 32, "relative_max_distance": 128, "num_decoder_layers": 2}),
                 "v1_1": V({**V1_1, "relative_buckets": 32, "relative_max_distance": 128, "num_decoder_layers": 2}),
                 "encoder": V({"head": "encoder"}),
                 "fused": V({"attention_impl": "fused"})},
                is_model=True),
    presets=PRESETS,
    generates=True,
    decoding=Decoding(encoder_decoder=True),
    checkpoints=(HF,),
    keras_hub=(KERAS_HUB,),
    walkthrough=WALKTHROUGH,
    base_preset="t5-small",
)
