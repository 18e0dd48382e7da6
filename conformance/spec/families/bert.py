"""BERT (Devlin et al. 2018): base and large as published, and Turc et al. 2019's small ones
(tiny, mini, small, medium); a post-norm encoder with a pooler and task heads."""
from __future__ import annotations

import numpy as np

from conformance.core.config import Config
from conformance.spec.entry import Entry, Variant as V
from conformance.spec.family import Checkpoint, Family, KerasHub, Stack, Step, Task, Walkthrough
from conformance.spec.inputs import token_inputs
from conformance.spec.leaves import (KERAS_DENSE as DENSE, KERAS_HEADS_IN as HEADS_IN, KERAS_HEADS_OUT as HEADS_OUT,
                                     KERAS_NORM, KERAS_TABLE as TABLE, TORCH_EMBEDDING as EMBEDDING, TORCH_LINEAR as LINEAR,
                                     TORCH_NORM as NORM, Leaf)


def _bert(layers, width, heads):
    return Config(kind="bert", d_model=width, num_heads=heads, d_ff=4 * width, num_layers=layers,
                  vocab_size=30522, max_positions=512, type_vocab_size=2, activation="gelu",
                  layer_norm_eps=1e-12, norm_first=False, causal=False)


TINY = Config(kind="bert", d_model=32, num_heads=4, d_ff=64, vocab_size=97, max_positions=32, num_layers=2)

HF = Checkpoint(
    model_type="bert",
    classes={"BertModel": "none", "BertForMaskedLM": "mlm",
             "BertForSequenceClassification": "classification", "BertForQuestionAnswering": "qa",
             "BertForPreTraining": "mlm"},
    base_class="BertModel", prefix="bert.",
    modules={
        "embeddings.token": ("{base}embeddings.word_embeddings", EMBEDDING),
        "embeddings.position": ("{base}embeddings.position_embeddings", EMBEDDING),
        "embeddings.segment": ("{base}embeddings.token_type_embeddings", EMBEDDING),
        "embeddings.norm": ("{base}embeddings.LayerNorm", NORM),
        "encoder.{i}.attention.query": ("{base}encoder.layer.{i}.attention.self.query", LINEAR),
        "encoder.{i}.attention.key": ("{base}encoder.layer.{i}.attention.self.key", LINEAR),
        "encoder.{i}.attention.value": ("{base}encoder.layer.{i}.attention.self.value", LINEAR),
        "encoder.{i}.attention.output": ("{base}encoder.layer.{i}.attention.output.dense", LINEAR),
        "encoder.{i}.attention_norm": ("{base}encoder.layer.{i}.attention.output.LayerNorm", NORM),
        "encoder.{i}.feed_forward.inner": ("{base}encoder.layer.{i}.intermediate.dense", LINEAR),
        "encoder.{i}.feed_forward.outer": ("{base}encoder.layer.{i}.output.dense", LINEAR),
        "encoder.{i}.feed_forward_norm": ("{base}encoder.layer.{i}.output.LayerNorm", NORM),
        "pooler": ("{base}pooler.dense", LINEAR),
        "mlm.transform": ("cls.predictions.transform.dense", LINEAR),
        "mlm.norm": ("cls.predictions.transform.LayerNorm", NORM),
        "mlm": ("cls.predictions", (Leaf("bias", "bias"),)),
        "classifier": ("classifier", LINEAR),
        "qa": ("qa_outputs", LINEAR),
    },
    tied={"cls.predictions.decoder.weight": "embeddings.token.table", "cls.predictions.decoder.bias": "mlm.bias"},
    buffers=("{base}embeddings.position_ids", "{base}embeddings.token_type_ids"),
    foreign=("cls.seq_relationship.weight", "cls.seq_relationship.bias"),
    fields={"d_model": ("hidden_size", 768), "num_heads": ("num_attention_heads", 12),
            "d_ff": ("intermediate_size", 3072), "num_layers": ("num_hidden_layers", 12),
            "vocab_size": ("vocab_size", 30522), "max_positions": ("max_position_embeddings", 512),
            "type_vocab_size": ("type_vocab_size", 2), "layer_norm_eps": ("layer_norm_eps", 1e-12),
            "activation": ("hidden_act", "gelu"), "dropout": ("hidden_dropout_prob", 0.1)},
    fixed={"position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False},
    constants={"kind": "bert", "norm_first": False, "causal": False, "use_bias": True, "position": "learned",
               "scale_embeddings": False},
    write=lambda cfg, cls: {"attention_probs_dropout_prob": cfg.dropout, **(
        {"id2label": {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)},
         "label2id": {f"LABEL_{i}": i for i in range(cfg.num_labels)}} if cfg.head == "classification" else {})},
)

KERAS_HUB = KerasHub(
    backbone="BertBackbone",
    modules={
        "embeddings.token": ("token_embedding", TABLE),
        "embeddings.position": ("position_embedding", TABLE),
        "embeddings.segment": ("segment_embedding", TABLE),
        "embeddings.norm": ("embeddings_layer_norm", KERAS_NORM),
        "encoder.{i}.attention.query": ("transformer_layer_{i}/self_attention_layer/query", HEADS_IN),
        "encoder.{i}.attention.key": ("transformer_layer_{i}/self_attention_layer/key", HEADS_IN),
        "encoder.{i}.attention.value": ("transformer_layer_{i}/self_attention_layer/value", HEADS_IN),
        "encoder.{i}.attention.output": ("transformer_layer_{i}/self_attention_layer/attention_output", HEADS_OUT),
        "encoder.{i}.attention_norm": ("transformer_layer_{i}/self_attention_layer_norm", KERAS_NORM),
        "encoder.{i}.feed_forward.inner": ("transformer_layer_{i}/feedforward_intermediate_dense", DENSE),
        "encoder.{i}.feed_forward.outer": ("transformer_layer_{i}/feedforward_output_dense", DENSE),
        "encoder.{i}.feed_forward_norm": ("transformer_layer_{i}/feedforward_layer_norm", KERAS_NORM),
        "pooler": ("pooled_dense", DENSE),
    },
    # BertBackbone hard-codes the tanh GELU (Google's original BERT code did too; the paper and
    # transformers use erf) and the published epsilon.
    numerics={"activation": "gelu_tanh", "layer_norm_eps": 1e-12, "norm_first": False, "causal": False},
    required={"use_bias": True, "position": "learned", "scale_embeddings": False, "head": "none",
              "attention_impl": "reference"},
    dims=lambda cfg: dict(vocabulary_size=cfg.vocab_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                          hidden_dim=cfg.d_model, intermediate_dim=cfg.d_ff, dropout=cfg.dropout,
                          max_sequence_length=cfg.max_positions, num_segments=cfg.type_vocab_size),
    inputs={"input_ids": ("token_ids", None), "attention_mask": ("padding_mask", "ones"),
            "token_type_ids": ("segment_ids", "zeros")},
    outputs={"last_hidden_state": "sequence_output", "pooled_output": "pooled_output"},
)

WALKTHROUGH = Walkthrough(
    "A one-layer BERT (D = 8, 2 heads) on 4 tokens in two segments, the 4th padding.",
    dict(d_model=8, num_heads=2, d_ff=16, vocab_size=11, max_positions=8, num_layers=1),
    {"input_ids": [[2, 7, 7, 5]], "attention_mask": [[1, 1, 1, 0]], "token_type_ids": [[0, 0, 1, 1]]},
    (Step("embeddings.token.output", "Token rows."),
     Step("embeddings.position.output", "Position rows 0..3."),
     Step("embeddings.segment.output", "Segment rows: A, A, B, B."),
     Step("embeddings.output", "Their sum, layer-normed (eps 1e-12).", "transformers.BertModel's hidden_states[0]."),
     Step("encoder.0.attention.q", "Layer 0's queries, split into heads."),
     Step("encoder.0.attention.probs", "Layer 0's attention, per head; the padded key is 0.",
          "transformers fills masked scores with the dtype minimum, not -1e9: the same after "
          "softmax unless a row is fully masked."),
     Step("encoder.0.output", "Layer 0's output: the last hidden state here."),
     Step("pooled", "The pooler: tanh(h[:, 0] W + b) on the [CLS] position.")),
    shows=("num_layers", "num_heads", "head_dim", "d_ff", "activation", "layer_norm_eps", "norm_first", "causal",
           "vocab_size", "max_positions"),
    transformers_steps={"embeddings.output": ("hidden_states", 0), "encoder.0.attention.probs": ("attentions", 0),
                        "encoder.0.output": ("hidden_states", 1), "pooled": ("pooler_output", None)},
)

STACK = Stack(
    layers="encoder",
    embedding_call=lambda x: ((x["input_ids"], x.get("token_type_ids", np.zeros_like(x["input_ids"]))), {}),
    layer_call=lambda x: {"mask": x.get("attention_mask")},
    rows={"embeddings.token.table": "input_ids"},
    vocabulary={"embeddings.token.table": 0, "mlm.bias": 0},
    head_reads=lambda cfg: ("embeddings.token.table",) if cfg.head == "mlm" else (),  # the tied MLM decoder
)

FAMILY = Family(
    entry=Entry("bert", "Bert", TINY, token_inputs,
                {"default": V(options={"segments": True}), "mlm": V({"head": "mlm"}),
                 "classification": V({"head": "classification"}, {"segments": True}), "qa": V({"head": "qa"}),
                 "fused": V({"attention_impl": "fused"}, {"segments": True})},
                is_model=True),
    presets={"bert-tiny": _bert(2, 128, 2), "bert-mini": _bert(4, 256, 4), "bert-small": _bert(4, 512, 8),
             "bert-medium": _bert(8, 512, 8), "bert-base": _bert(12, 768, 12), "bert-large": _bert(24, 1024, 16)},
    run_inputs={"segments": True},
    tasks={"mlm": Task("mlm"), "classification": Task("classification")},
    pretraining="mlm",
    checkpoints=(HF,), keras_hub=(KERAS_HUB,), walkthrough=WALKTHROUGH, base_preset="bert-base",
    stack=STACK,
)
