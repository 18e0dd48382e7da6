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
    buffers=(), foreign=(), fields=FIELDS, fixed={"tie_word_embeddings": True, "is_decoder": False},
    constants={k: v for k, v in COMMON.items() if k not in ("activation",)} | {
        "causal": False, "feed_forward": "standard", "attention_scale": None, "num_kv_heads": None,
        "attention_head_dim": None, "output_bias": None, "qk_norm": False, "sandwich_norm": False,
        "sliding_window": None, "attn_logit_softcap": None, "final_logit_softcap": None, "scale_logits": False},
    read=_read, write=_write, refine=_refine,
    hidden_states={"encoder_hidden_states": ("encoder_embedding_norm.output", "encoder.{i}.output", None),
                   "decoder_hidden_states": ("decoder_embedding_norm.output", "decoder.{i}.output", None)},
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
    base_preset="bart-base",
)
