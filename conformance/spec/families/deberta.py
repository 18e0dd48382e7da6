"""DeBERTa-v3 (He et al. 2021, 2023): xsmall, small, base and large as released by Microsoft;
deberta-tiny is this project's own small one for fast tests. BERT's post-norm layer around
disentangled attention (`numpy_ref.disentangled`), no absolute positions, no segments, no pooler.

Its own family, not a BERT variant: the attention takes the model's relative table as a second
input and masks padded queries as well as keys, and the embeddings carry no positions
(`numpy_ref.deberta` says why at more length). The published dimensions give exactly
`transformers`' parameter counts (`DebertaV2Model.num_parameters()`).
"""
from __future__ import annotations

from conformance.core.config import RELATIVE_TERMS, Config
from conformance.spec.entry import Entry, Variant as V
from conformance.spec.family import Checkpoint, Family, KerasHub, Step, Walkthrough
from conformance.spec.inputs import token_inputs
from conformance.spec.leaves import (KERAS_DENSE as DENSE, KERAS_HEADS_IN as HEADS_IN, KERAS_NORM, KERAS_TABLE,
                                     TORCH_EMBEDDING as EMBEDDING, TORCH_LINEAR as LINEAR, TORCH_NORM as NORM, Leaf)

V3 = dict(kind="deberta", position="relative", relative_attention=("c2p", "p2c"), position_buckets=256,
          vocab_size=128100, max_positions=512, type_vocab_size=0, pooler=False, layer_norm_eps=1e-7,
          activation="gelu", norm_first=False, causal=False)


def _v3(layers, width, heads):
    return Config(d_model=width, num_heads=heads, d_ff=4 * width, num_layers=layers, **V3)


PRESETS = {"deberta-v3-xsmall": _v3(12, 384, 6), "deberta-v3-small": _v3(6, 768, 12),
           "deberta-v3-base": _v3(12, 768, 12), "deberta-v3-large": _v3(24, 1024, 16)}

TINY = Config(**{**V3, "d_model": 32, "num_heads": 4, "d_ff": 64, "num_layers": 2, "vocab_size": 97,
                 "max_positions": 32, "position_buckets": 4, "max_relative_positions": 16})

# ------------------------------------------------------------------ Hugging Face: DebertaV2 (v2 and v3)

# config.json keys v3 sets and the implementation here assumes, with transformers' defaults when absent
# (never v3's: DebertaV2Config's class defaults are v2-xlarge without relative attention)
V3_KEYS = {"relative_attention": (True, False), "position_biased_input": (False, True), "share_att_key": (True, False),
           "conv_kernel_size": (0, 0)}


def _read(hf: dict, cls: str) -> dict:
    for key, (needed, default) in V3_KEYS.items():
        if hf.get(key, default) != needed:
            raise ValueError(f"config.json {key} must be {needed!r} to import as {cls} (DeBERTa-v3's disentangled "
                             f"attention); received {key}={hf.get(key, default)!r}")
    norm = [x.strip() for x in str(hf.get("norm_rel_ebd", "none")).lower().split("|")]
    if "layer_norm" not in norm:
        raise ValueError(f"config.json norm_rel_ebd must include 'layer_norm' to import as {cls} (the relative table "
                         f"is layer-normed); received norm_rel_ebd={hf.get('norm_rel_ebd', 'none')!r}")
    if hf.get("embedding_size", hf.get("hidden_size")) != hf.get("hidden_size"):
        raise ValueError(f"config.json embedding_size must equal hidden_size to import as {cls} (no embed_proj); "
                         f"received embedding_size={hf['embedding_size']!r}, hidden_size={hf.get('hidden_size')!r}")
    if hf.get("type_vocab_size", 0):
        raise ValueError(f"config.json type_vocab_size must be 0 to import as {cls} (no segment embeddings); "
                         f"received type_vocab_size={hf['type_vocab_size']!r}")
    terms = hf.get("pos_att_type") or []
    terms = [t.strip() for t in terms.lower().split("|")] if isinstance(terms, str) else list(terms)
    unknown = [t for t in terms if t not in RELATIVE_TERMS]
    if unknown:
        raise ValueError(f"config.json pos_att_type must name terms of {list(RELATIVE_TERMS)}; received {unknown}")
    buckets, reach = hf.get("position_buckets", -1), hf.get("max_relative_positions", -1)
    return {"relative_attention": tuple(t for t in RELATIVE_TERMS if t in terms), "position_buckets": max(buckets, 0),
            "max_relative_positions": reach if reach >= 1 else None}


def _write(cfg: Config, cls: str) -> dict:
    labels = ({"id2label": {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)},
               "label2id": {f"LABEL_{i}": i for i in range(cfg.num_labels)}} if cfg.head == "token_classification" else {})
    return {**{key: needed for key, (needed, _) in V3_KEYS.items()}, "norm_rel_ebd": "layer_norm",
            "pos_att_type": list(cfg.relative_attention), "position_buckets": cfg.position_buckets or -1,
            "max_relative_positions": cfg.max_relative_positions or -1, "type_vocab_size": 0,
            "attention_probs_dropout_prob": cfg.dropout, **labels}


LAYER = "{base}encoder.layer.{i}"
HF = Checkpoint(
    model_type="deberta-v2",
    classes={"DebertaV2Model": "none", "DebertaV2ForTokenClassification": "token_classification"},
    base_class="DebertaV2Model", prefix="deberta.",
    modules={
        "embeddings.token": ("{base}embeddings.word_embeddings", EMBEDDING),
        "embeddings.norm": ("{base}embeddings.LayerNorm", NORM),
        "relative": ("{base}encoder.rel_embeddings", EMBEDDING),
        "relative_norm": ("{base}encoder.LayerNorm", NORM),
        "encoder.{i}.attention.query": (f"{LAYER}.attention.self.query_proj", LINEAR),
        "encoder.{i}.attention.key": (f"{LAYER}.attention.self.key_proj", LINEAR),
        "encoder.{i}.attention.value": (f"{LAYER}.attention.self.value_proj", LINEAR),
        "encoder.{i}.attention.output": (f"{LAYER}.attention.output.dense", LINEAR),
        "encoder.{i}.attention_norm": (f"{LAYER}.attention.output.LayerNorm", NORM),
        "encoder.{i}.feed_forward.inner": (f"{LAYER}.intermediate.dense", LINEAR),
        "encoder.{i}.feed_forward.outer": (f"{LAYER}.output.dense", LINEAR),
        "encoder.{i}.feed_forward_norm": (f"{LAYER}.output.LayerNorm", NORM),
        "classifier": ("classifier", LINEAR),
    },
    tied={}, buffers=("{base}embeddings.position_ids",), foreign=(),
    fields={"d_model": ("hidden_size", 1536), "num_heads": ("num_attention_heads", 24),
            "d_ff": ("intermediate_size", 6144), "num_layers": ("num_hidden_layers", 24),
            "vocab_size": ("vocab_size", 128100), "max_positions": ("max_position_embeddings", 512),
            "layer_norm_eps": ("layer_norm_eps", 1e-7), "activation": ("hidden_act", "gelu"),
            "dropout": ("hidden_dropout_prob", 0.1)},
    fixed={}, read=_read, write=_write,
    constants={"kind": "deberta", "position": "relative", "type_vocab_size": 0, "attention_scale": None,
               "pooler": False, "norm_first": False, "causal": False},
    masked_queries=True,
)

# ------------------------------------------------------------------------------ keras-hub

ENCODER = "disentangled_attention_encoder_layer_{i}"
KERAS_HUB = KerasHub(
    backbone="DebertaV3Backbone",
    modules={
        "embeddings.token": ("token_embedding", KERAS_TABLE),
        "embeddings.norm": ("embeddings_layer_norm", KERAS_NORM),
        "relative": ("rel_embedding", (Leaf("table", "rel_embedding"),)),
        "relative_norm": ("rel_embedding/rel_embeddings_layer_norm", KERAS_NORM),
        "encoder.{i}.attention.query": (f"{ENCODER}/self_attention_layer/query", HEADS_IN),
        "encoder.{i}.attention.key": (f"{ENCODER}/self_attention_layer/key", HEADS_IN),
        "encoder.{i}.attention.value": (f"{ENCODER}/self_attention_layer/value", HEADS_IN),
        "encoder.{i}.attention.output": (f"{ENCODER}/self_attention_layer/attention_output", DENSE),
        "encoder.{i}.attention_norm": (f"{ENCODER}/self_attention_layer_norm", KERAS_NORM),
        "encoder.{i}.feed_forward.inner": (f"{ENCODER}/feedforward_intermediate_dense", DENSE),
        "encoder.{i}.feed_forward.outer": (f"{ENCODER}/feedforward_output_dense", DENSE),
        "encoder.{i}.feed_forward_norm": (f"{ENCODER}/feedforward_layer_norm", KERAS_NORM),
    },
    # DebertaV3Backbone hard-codes v3's epsilon 1e-7 and erf GELU; it masks keys only and does not zero
    # the padded embeddings, so its padded positions are its own (the real ones are not affected).
    numerics={"layer_norm_eps": 1e-7, "activation": "gelu"},
    required={"relative_attention": ("c2p", "p2c"), "head": "none"},
    dims=lambda cfg: dict(vocabulary_size=cfg.vocab_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                          hidden_dim=cfg.d_model, intermediate_dim=cfg.d_ff, dropout=cfg.dropout,
                          max_sequence_length=cfg.max_relative_positions or cfg.max_positions,
                          bucket_size=cfg.position_buckets),
    inputs={"input_ids": ("token_ids", None), "attention_mask": ("padding_mask", "ones")},
    outputs={"last_hidden_state": None},
    padded_positions=False,
)

# ------------------------------------------------------------------------------ walkthrough

WALKTHROUGH = Walkthrough(
    "A one-layer DeBERTa-v3 (D = 8, 2 heads, buckets 4 up to distance 8) on 5 tokens: distances 3 and 4 "
    "share a bucket.",
    dict(d_model=8, num_heads=2, d_ff=16, vocab_size=11, max_positions=16, num_layers=1,
         max_relative_positions=8),
    {"input_ids": [[2, 7, 7, 5, 3]], "attention_mask": [[1, 1, 1, 1, 1]]},
    (Step("embeddings.output", "Token rows, layer-normed (eps 1e-7); no position rows (a padded row would be "
                               "zeroed here).", "transformers.DebertaV2Model's hidden_states[0]."),
     Step("relative_norm.output", "The relative table, 2k = 8 rows (distances -4..3), layer-normed once for "
                                  "every layer."),
     Step("encoder.0.attention.c2p", "Content-to-position: query i against the key projection of row "
                                     "d(i, j) of the table."),
     Step("encoder.0.attention.p2c", "Position-to-content: key j against the query projection of the same row."),
     Step("encoder.0.attention.scores", "The three terms summed and divided by sqrt(3 Dh) = sqrt(12)."),
     Step("encoder.0.attention.probs", "Softmax over the keys (a padded query's row would be all zeros).",
          "transformers' padded query row is a uniform 1/T (a softmax of dtype minima): never read."),
     Step("encoder.0.output", "LN(x + Attn), then LN(x + FFN): BERT's post-norm layer.")),
    shows=("num_heads", "head_dim", "relative_attention", "position_buckets", "max_relative_positions",
           "relative_span", "layer_norm_eps"),
    transformers_steps={"embeddings.output": ("hidden_states", 0), "encoder.0.attention.probs": ("attentions", 0),
                        "encoder.0.output": ("hidden_states", 1)},
    transformers_dtype="float32",
    transformers_why="its attention divides by a float32 sqrt(3 Dh) in every dtype, 1e-8 off float64's",
)

FAMILY = Family(
    entry=Entry("deberta", "Deberta", TINY, token_inputs,
                {"default": V(), "token_classification": V({"head": "token_classification"})},
                is_model=True),
    presets=PRESETS,
    checkpoints=(HF,), keras_hub=(KERAS_HUB,), walkthrough=WALKTHROUGH, base_preset="deberta-v3-base",
)
