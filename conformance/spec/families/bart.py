"""BART (Lewis et al. 2020): bart-base and bart-large as released, the fairseq layout transformers keeps
(a post-norm encoder-decoder, learned positions from row 2, a layer norm on each stack's embeddings,
exact GELU, the head tied to the token table). The published dimensions give exactly `transformers`'
parameter counts (`BartForConditionalGeneration.num_parameters()`: its `final_logits_bias` is a buffer,
not a parameter); bart-tiny is this project's own small one.

config.json: `max_position_embeddings` counts positions, so the table has it + 2 rows (`max_positions`
here counts rows); one width and one head count serve both stacks here, so `decoder_ffn_dim` and
`decoder_attention_heads` must equal the encoder's (refused by name otherwise). `final_logits_bias` is
zeros in every released BART: a file whose bias is not zero reads as `logits_bias=True` (`_refine`).
"""
from __future__ import annotations

import numpy as np

from conformance.core.config import Config
from conformance.spec.entry import Entry, Variant as V
from conformance.spec.family import Checkpoint, Decoding, Family, KerasHub, Step, Task, Walkthrough
from conformance.spec.inputs import seq2seq_inputs
from conformance.spec.leaves import (KERAS_DENSE, KERAS_HEADS_IN, KERAS_HEADS_OUT, KERAS_NORM, KERAS_TABLE,
                                     TORCH_EMBEDDING as EMBEDDING, TORCH_LINEAR as LINEAR, TORCH_NORM as NORM, Leaf)

OFFSET = 2  # fairseq's: rows 0 and 1 of a BART position table are never read
COMMON = dict(kind="bart", norm="layer", layer_norm_eps=1e-5, norm_first=False, use_bias=True, position="learned",
              position_offset=OFFSET, activation="gelu", share_embeddings=True, tie_embeddings=True)


def _bart(layers, width, heads):
    return Config(d_model=width, num_heads=heads, d_ff=4 * width, num_layers=layers, num_decoder_layers=layers,
                  vocab_size=50265, max_positions=1024 + OFFSET, dropout=0.1, **COMMON)


PRESETS = {
    "bart-tiny": Config(d_model=64, num_heads=4, d_ff=256, num_layers=2, num_decoder_layers=2, vocab_size=1000,
                        max_positions=256 + OFFSET, dropout=0.1, **COMMON),
    "bart-base": _bart(6, 768, 12),
    "bart-large": _bart(12, 1024, 16),
}

TINY = Config(d_model=32, num_heads=4, d_ff=64, num_layers=2, num_decoder_layers=2, vocab_size=97,
              max_positions=64 + OFFSET, dropout=0.1, **COMMON)

# ------------------------------------------------------------------ Hugging Face


def _attention(ours, theirs):
    return {f"{ours}.{p}": (f"{theirs}.{hf}", LINEAR)
            for p, hf in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"), ("output", "out_proj"))}


MODULES = {
    "": ("", (Leaf("logits_bias", "final_logits_bias", "row"),)),  # outside the backbone: no {base}
    "token_embedding": ("{base}shared", EMBEDDING),
    "encoder_position": ("{base}encoder.embed_positions", EMBEDDING),
    "encoder_embedding_norm": ("{base}encoder.layernorm_embedding", NORM),
    **_attention("encoder.{i}.attention", "{base}encoder.layers.{i}.self_attn"),
    "encoder.{i}.attention_norm": ("{base}encoder.layers.{i}.self_attn_layer_norm", NORM),
    "encoder.{i}.feed_forward.inner": ("{base}encoder.layers.{i}.fc1", LINEAR),
    "encoder.{i}.feed_forward.outer": ("{base}encoder.layers.{i}.fc2", LINEAR),
    "encoder.{i}.feed_forward_norm": ("{base}encoder.layers.{i}.final_layer_norm", NORM),
    "decoder_position": ("{base}decoder.embed_positions", EMBEDDING),
    "decoder_embedding_norm": ("{base}decoder.layernorm_embedding", NORM),
    **_attention("decoder.{i}.self_attention", "{base}decoder.layers.{i}.self_attn"),
    "decoder.{i}.self_attention_norm": ("{base}decoder.layers.{i}.self_attn_layer_norm", NORM),
    **_attention("decoder.{i}.cross_attention", "{base}decoder.layers.{i}.encoder_attn"),
    "decoder.{i}.cross_attention_norm": ("{base}decoder.layers.{i}.encoder_attn_layer_norm", NORM),
    "decoder.{i}.feed_forward.inner": ("{base}decoder.layers.{i}.fc1", LINEAR),
    "decoder.{i}.feed_forward.outer": ("{base}decoder.layers.{i}.fc2", LINEAR),
    "decoder.{i}.feed_forward_norm": ("{base}decoder.layers.{i}.final_layer_norm", NORM),
}
FIELDS = {"d_model": ("d_model", 1024), "num_heads": ("encoder_attention_heads", 16), "d_ff": ("encoder_ffn_dim", 4096),
          "num_layers": ("encoder_layers", 12), "num_decoder_layers": ("decoder_layers", 12),
          "vocab_size": ("vocab_size", 50265), "max_positions": ("max_position_embeddings", 1024),
          "activation": ("activation_function", "gelu"), "dropout": ("dropout", 0.1),
          "scale_embeddings": ("scale_embedding", False)}
SAME = {"decoder_attention_heads": ("encoder_attention_heads", 16), "decoder_ffn_dim": ("encoder_ffn_dim", 4096)}


def _read(hf: dict, cls: str) -> dict:
    for theirs, (ours, default) in SAME.items():
        if hf.get(theirs, default) != hf.get(ours, default):
            raise ValueError(f"config.json {theirs} must equal {ours} (one width and one head count serve both "
                             f"stacks here); received {theirs}={hf.get(theirs, default)!r}, "
                             f"{ours}={hf.get(ours, default)!r}")
    return {"max_positions": hf.get("max_position_embeddings", 1024) + OFFSET}  # + the two rows never read


def _write(cfg: Config, cls: str) -> dict:
    return {"max_position_embeddings": cfg.max_positions - OFFSET, "decoder_attention_heads": cfg.num_heads,
            "decoder_ffn_dim": cfg.d_ff, "attention_dropout": 0.0, "activation_dropout": 0.0}


def _refine(cfg: Config, tensors: dict, prefix: str) -> dict:
    """`final_logits_bias`, a buffer of zeros in released BARTs: a logits bias only where it is not zero."""
    bias = tensors.get("final_logits_bias")
    return {"logits_bias": bias is not None and bool(np.any(bias))}


HF = Checkpoint(
    model_type="bart",
    classes={"BartForConditionalGeneration": "none", "BartModel": "none"},
    base_class="BartModel", prefix="model.", modules=MODULES,
    tied={"{base}encoder.embed_tokens.weight": "token_embedding.table",
          "{base}decoder.embed_tokens.weight": "token_embedding.table", "lm_head.weight": "token_embedding.table"},
    buffers=("final_logits_bias",),  # zeros: read past, unless `_refine` finds a bias there and maps it
    foreign=(), fields=FIELDS, fixed={"tie_word_embeddings": True, "is_decoder": False},
    constants={k: v for k, v in COMMON.items() if k not in ("activation",)} | {
        "causal": False, "feed_forward": "standard", "attention_scale": None, "num_kv_heads": None,
        "attention_head_dim": None, "output_bias": None, "qk_norm": False, "sandwich_norm": False,
        "sliding_window": None, "attn_logit_softcap": None, "final_logit_softcap": None, "scale_logits": False},
    read=_read, write=_write, refine=_refine,
    hidden_states={"encoder_hidden_states": ("encoder_embedding_norm.output", "encoder.{i}.output", None),
                   "decoder_hidden_states": ("decoder_embedding_norm.output", "decoder.{i}.output", None)},
)

# ------------------------------------------------------------------ keras-hub


def _keras_attention(ours, theirs):
    return {f"{ours}.{p}": (f"{theirs}/{kh}", KERAS_HEADS_OUT if p == "output" else KERAS_HEADS_IN)
            for p, kh in (("query", "query"), ("key", "key"), ("value", "value"), ("output", "attention_output"))}


ENC, DEC = "transformer_encoder_layer_{i}", "transformer_decoder_layer_{i}"
KERAS_HUB = KerasHub(
    backbone="BartBackbone",
    modules={
        "token_embedding": ("token_embedding", KERAS_TABLE),
        "encoder_position": ("encoder_position_embedding", KERAS_TABLE),
        "encoder_embedding_norm": ("encoder_embeddings_layer_norm", KERAS_NORM),
        **_keras_attention("encoder.{i}.attention", f"{ENC}/self_attention_layer"),
        "encoder.{i}.attention_norm": (f"{ENC}/self_attention_layer_norm", KERAS_NORM),
        "encoder.{i}.feed_forward.inner": (f"{ENC}/feedforward_intermediate_dense", KERAS_DENSE),
        "encoder.{i}.feed_forward.outer": (f"{ENC}/feedforward_output_dense", KERAS_DENSE),
        "encoder.{i}.feed_forward_norm": (f"{ENC}/feedforward_layer_norm", KERAS_NORM),
        "decoder_position": ("decoder_position_embedding", KERAS_TABLE),
        "decoder_embedding_norm": ("decoder_embeddings_layer_norm", KERAS_NORM),
        **_keras_attention("decoder.{i}.self_attention", f"{DEC}/self_attention"),
        "decoder.{i}.self_attention_norm": (f"{DEC}/self_attention_layer_norm", KERAS_NORM),
        **_keras_attention("decoder.{i}.cross_attention", f"{DEC}/cross_attention"),
        "decoder.{i}.cross_attention_norm": (f"{DEC}/cross_attention_layer_norm", KERAS_NORM),
        "decoder.{i}.feed_forward.inner": (f"{DEC}/feedforward_intermediate_dense", KERAS_DENSE),
        "decoder.{i}.feed_forward.outer": (f"{DEC}/feedforward_output_dense", KERAS_DENSE),
        "decoder.{i}.feed_forward_norm": (f"{DEC}/feedforward_layer_norm", KERAS_NORM),
    },
    # BartBackbone reads position p at row p: its converter drops transformers' first two rows; here the
    # whole table is its, so the reference without the offset is its math (`test_keras_hub.py` measures
    # both). Epsilon 1e-5 and exact GELU are hard-coded, as BART's.
    numerics={"position_offset": 0, "layer_norm_eps": 1e-5, "activation": "gelu"},
    # no final_logits_bias, no embedding scale, one num_layers for both stacks, the tied head
    required={"logits_bias": False, "scale_embeddings": False, "num_decoder_layers": lambda cfg: cfg.num_layers,
              "tie_embeddings": True, "head": "none", "attention_impl": "reference"},
    dims=lambda cfg: dict(vocabulary_size=cfg.vocab_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                          hidden_dim=cfg.d_model, intermediate_dim=cfg.d_ff, dropout=0.0,
                          max_sequence_length=cfg.max_positions),
    inputs={"input_ids": ("encoder_token_ids", None), "attention_mask": ("encoder_padding_mask", "ones"),
            "decoder_input_ids": ("decoder_token_ids", None, "decoder_input_ids"),
            "decoder_attention_mask": ("decoder_padding_mask", "ones", "decoder_input_ids")},
    outputs={"encoder_last_hidden_state": "encoder_sequence_output", "last_hidden_state": "decoder_sequence_output"},
    tied_logits=True,
)

# ------------------------------------------------------------------ walkthrough

WALKTHROUGH = Walkthrough(
    "A one-layer BART (D = 8, 2 heads, exact GELU, post-norm), a source of 5 tokens (the 5th padding), a target "
    "of 3 starting with the decoder start token 2.",
    dict(d_model=8, num_heads=2, d_ff=16, vocab_size=11, max_positions=8 + OFFSET, num_layers=1, num_decoder_layers=1),
    {"input_ids": [[0, 7, 7, 5, 1]], "attention_mask": [[1, 1, 1, 1, 0]], "decoder_input_ids": [[2, 4, 9]],
     "decoder_attention_mask": [[1, 1, 1]]},
    (Step("token_embedding.output", "Token rows of the one shared table (not scaled: scale_embedding is mBART's)."),
     Step("encoder_position.output", "Learned position rows 2..6 for positions 0..4: the offset of 2.",
          "fairseq kept rows 0 and 1 for its padding index; keras-hub's converter drops them and reads from 0."),
     Step("encoder_embedding_norm.output", "Their sum, layer-normed (layernorm_embedding, eps 1e-5).",
          "transformers' encoder_hidden_states[0]."),
     Step("encoder.0.attention.probs", "Self-attention over the source; the padded key is 0."),
     Step("encoder.0.output", "LN(x + FFN(x)) after LN(x + Attention(x)): post-norm, so no final norm follows."),
     Step("decoder_embedding_norm.output", "The target's rows, positions from row 2 again, layer-normed."),
     Step("decoder.0.self_attention.probs", "Causal self-attention over the target."),
     Step("decoder.0.cross_attention.probs", "Target over source; the padded source position is 0."),
     Step("decoder.0.output", "The decoder's output: the last hidden state."),
     Step("logits", "h E^T (+ final_logits_bias, zeros in every released BART): the head is the token table.")),
    shows=("num_layers", "num_decoder_layers", "num_heads", "head_dim", "d_ff", "activation", "layer_norm_eps",
           "max_positions", "position_offset", "vocab_size"),
    transformers_steps={"encoder_embedding_norm.output": ("encoder_hidden_states", 0),
                        "encoder.0.attention.probs": ("encoder_attentions", 0),
                        "encoder.0.output": ("encoder_last_hidden_state", None),
                        "decoder.0.self_attention.probs": ("decoder_attentions", 0),
                        "decoder.0.cross_attention.probs": ("cross_attentions", 0),
                        "decoder.0.output": ("decoder_hidden_states", -1), "logits": ("logits", None)},
)

FAMILY = Family(
    entry=Entry("bart", "Bart", TINY, seq2seq_inputs,
                {"default": V(),
                 "scaled_biased": V({"scale_embeddings": True, "logits_bias": True}),  # mBART's scale, a bias
                 "fused": V({"attention_impl": "fused"})},
                is_model=True),
    presets=PRESETS,
    generates=True,
    decoding=Decoding(encoder_decoder=True),
    checkpoints=(HF,),
    keras_hub=(KERAS_HUB,),
    walkthrough=WALKTHROUGH,
    base_preset="bart-base",
)
