"""BERT (Devlin et al. 2018) and the descendants that keep its layer, one model (`numpy_ref.bert`):

- BERT base and large as published, and Turc et al. 2019's small ones (tiny, mini, small, medium);
- RoBERTa (Liu et al. 2019): positions computed from the ids past the padding id, one segment type,
  514 position rows, epsilon 1e-5, a 50,265-token byte-level vocabulary;
- DistilBERT (Sanh et al. 2019): 6 layers, no segment embeddings, no pooler;
- ELECTRA (Clark et al. 2020): embeddings E = 128 wide projected to D = 256 (small), no pooler, the
  replaced-token discriminator head;
- ALBERT (Lan et al. 2019): factorized embeddings (E = 128) and one layer's weights for all 12.

Each is configuration of the one model (`Config.pad_positions`, `type_vocab_size`, `pooler`,
`embedding_size`, `num_layer_groups`), with its own Hugging Face layout (`checkpoint`). DeBERTa
is not: its attention is another function with its own inputs (`conformance.spec.families.deberta`).
The published dimensions give exactly `transformers`' parameter counts (`*Model.num_parameters()`).
"""
from __future__ import annotations

import numpy as np

from conformance.core.config import Config
from conformance.spec.entry import Entry, Variant as V
from conformance.spec.family import Checkpoint, Family, KerasHub, Stack, Step, Task, Walkthrough
from conformance.spec.inputs import token_inputs
from conformance.spec.leaves import (KERAS_DENSE as DENSE, KERAS_HEADS_IN as HEADS_IN, KERAS_HEADS_OUT as HEADS_OUT,
                                     KERAS_NORM, KERAS_TABLE as TABLE, TORCH_EMBEDDING as EMBEDDING, TORCH_LINEAR as LINEAR,
                                     TORCH_NORM as NORM, Leaf)


def _bert(layers, width, heads, **kw):
    return Config(**{**dict(kind="bert", d_model=width, num_heads=heads, d_ff=4 * width, num_layers=layers,
                            vocab_size=30522, max_positions=512, type_vocab_size=2, activation="gelu",
                            layer_norm_eps=1e-12, norm_first=False, causal=False), **kw})


ROBERTA = dict(vocab_size=50265, max_positions=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1,
               pad_positions=True, mlm_activation="gelu", checkpoint="roberta")
ALBERT = dict(vocab_size=30000, embedding_size=128, num_layer_groups=1, activation="gelu_tanh", dropout=0.0,
              checkpoint="albert")

PRESETS = {
    "bert-tiny": _bert(2, 128, 2), "bert-mini": _bert(4, 256, 4), "bert-small": _bert(4, 512, 8),
    "bert-medium": _bert(8, 512, 8), "bert-base": _bert(12, 768, 12), "bert-large": _bert(24, 1024, 16),
    "roberta-base": _bert(12, 768, 12, **ROBERTA), "roberta-large": _bert(24, 1024, 16, **ROBERTA),
    "distilbert-base": _bert(6, 768, 12, type_vocab_size=0, pooler=False, checkpoint="distilbert"),
    "electra-small": _bert(12, 256, 4, d_ff=1024, embedding_size=128, pooler=False, checkpoint="electra"),
    "electra-base": _bert(12, 768, 12, pooler=False, checkpoint="electra"),
    "albert-base-v2": _bert(12, 768, 12, **ALBERT), "albert-large-v2": _bert(24, 1024, 16, **ALBERT),
    "albert-xxlarge-v2": _bert(12, 4096, 64, d_ff=16384, **ALBERT),
}

TINY = Config(kind="bert", d_model=32, num_heads=4, d_ff=64, vocab_size=97, max_positions=32, num_layers=2)

# ------------------------------------------------------------------ Hugging Face: one layout per model_type

BERT_CONSTANTS = {"kind": "bert", "norm_first": False, "causal": False, "use_bias": True, "position": "learned",
                  "scale_embeddings": False, "pad_positions": False, "embedding_size": None,
                  "num_layer_groups": None, "pooler": True, "mlm_activation": None}
BERT_FIELDS = {"d_model": ("hidden_size", 768), "num_heads": ("num_attention_heads", 12),
               "d_ff": ("intermediate_size", 3072), "num_layers": ("num_hidden_layers", 12),
               "vocab_size": ("vocab_size", 30522), "max_positions": ("max_position_embeddings", 512),
               "type_vocab_size": ("type_vocab_size", 2), "layer_norm_eps": ("layer_norm_eps", 1e-12),
               "activation": ("hidden_act", "gelu"), "dropout": ("hidden_dropout_prob", 0.1)}
BERT_FIXED = {"position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False}
HEADS_WITH_LABELS = ("classification", "token_classification")


def _labels(cfg):
    """config.json's label maps: a classifier's size is read back from id2label."""
    if cfg.head not in HEADS_WITH_LABELS:
        return {}
    return {"id2label": {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)},
            "label2id": {f"LABEL_{i}": i for i in range(cfg.num_labels)}}


def _bert_layer(base: str) -> dict:
    """BERT's layer names under `base` ("{base}encoder.layer.{i}"), as RoBERTa and ELECTRA keep them."""
    return {
        "encoder.{i}.attention.query": (f"{base}.attention.self.query", LINEAR),
        "encoder.{i}.attention.key": (f"{base}.attention.self.key", LINEAR),
        "encoder.{i}.attention.value": (f"{base}.attention.self.value", LINEAR),
        "encoder.{i}.attention.output": (f"{base}.attention.output.dense", LINEAR),
        "encoder.{i}.attention_norm": (f"{base}.attention.output.LayerNorm", NORM),
        "encoder.{i}.feed_forward.inner": (f"{base}.intermediate.dense", LINEAR),
        "encoder.{i}.feed_forward.outer": (f"{base}.output.dense", LINEAR),
        "encoder.{i}.feed_forward_norm": (f"{base}.output.LayerNorm", NORM),
    }


EMBEDDINGS = {
    "embeddings.token": ("{base}embeddings.word_embeddings", EMBEDDING),
    "embeddings.position": ("{base}embeddings.position_embeddings", EMBEDDING),
    "embeddings.segment": ("{base}embeddings.token_type_embeddings", EMBEDDING),
    "embeddings.norm": ("{base}embeddings.LayerNorm", NORM),
}
BUFFERS = ("{base}embeddings.position_ids", "{base}embeddings.token_type_ids")

HF = Checkpoint(
    model_type="bert",
    classes={"BertModel": "none", "BertForMaskedLM": "mlm",
             "BertForSequenceClassification": "classification", "BertForQuestionAnswering": "qa",
             "BertForTokenClassification": "token_classification", "BertForPreTraining": "mlm"},
    base_class="BertModel", prefix="bert.",
    modules={
        **EMBEDDINGS, **_bert_layer("{base}encoder.layer.{i}"),
        "pooler": ("{base}pooler.dense", LINEAR),
        "mlm.transform": ("cls.predictions.transform.dense", LINEAR),
        "mlm.norm": ("cls.predictions.transform.LayerNorm", NORM),
        "mlm": ("cls.predictions", (Leaf("bias", "bias"),)),
        "classifier": ("classifier", LINEAR),
        "qa": ("qa_outputs", LINEAR),
    },
    tied={"cls.predictions.decoder.weight": "embeddings.token.table", "cls.predictions.decoder.bias": "mlm.bias"},
    buffers=BUFFERS,
    foreign=("cls.seq_relationship.weight", "cls.seq_relationship.bias"),
    fields=BERT_FIELDS, fixed=BERT_FIXED, constants=BERT_CONSTANTS,
    write=lambda cfg, cls: {"attention_probs_dropout_prob": cfg.dropout, **_labels(cfg)},
)

ROBERTA_HF = Checkpoint(
    model_type="roberta",
    classes={"RobertaModel": "none", "RobertaForMaskedLM": "mlm", "RobertaForSequenceClassification": "classification",
             "RobertaForQuestionAnswering": "qa", "RobertaForTokenClassification": "token_classification"},
    base_class="RobertaModel", prefix="roberta.",
    modules={
        **EMBEDDINGS, **_bert_layer("{base}encoder.layer.{i}"),
        "pooler": ("{base}pooler.dense", LINEAR),
        "mlm.transform": ("lm_head.dense", LINEAR),
        "mlm.norm": ("lm_head.layer_norm", NORM),
        "mlm": ("lm_head", (Leaf("bias", "bias"),)),
        "classifier": ("classifier", LINEAR),
        "qa": ("qa_outputs", LINEAR),
    },
    # RobertaClassificationHead is dense + tanh on position 0, then out_proj: our pooler and classifier
    head_modules={"classification": {"pooler": ("classifier.dense", LINEAR),
                                     "classifier": ("classifier.out_proj", LINEAR)}},
    tied={"lm_head.decoder.weight": "embeddings.token.table", "lm_head.decoder.bias": "mlm.bias"},
    buffers=BUFFERS, foreign=(),
    fields={**BERT_FIELDS, "vocab_size": ("vocab_size", 50265), "pad_token_id": ("pad_token_id", 1)},
    fixed=BERT_FIXED,
    constants={**BERT_CONSTANTS, "pad_positions": True, "mlm_activation": "gelu", "checkpoint": "roberta"},
    write=lambda cfg, cls: {"attention_probs_dropout_prob": cfg.dropout, "bos_token_id": 0, "eos_token_id": 2,
                            **_labels(cfg)},
)

DISTILBERT_HF = Checkpoint(
    model_type="distilbert",
    classes={"DistilBertModel": "none", "DistilBertForMaskedLM": "mlm", "DistilBertForQuestionAnswering": "qa",
             "DistilBertForTokenClassification": "token_classification"},
    base_class="DistilBertModel", prefix="distilbert.",
    modules={
        "embeddings.token": ("{base}embeddings.word_embeddings", EMBEDDING),
        "embeddings.position": ("{base}embeddings.position_embeddings", EMBEDDING),
        "embeddings.norm": ("{base}embeddings.LayerNorm", NORM),
        "encoder.{i}.attention.query": ("{base}transformer.layer.{i}.attention.q_lin", LINEAR),
        "encoder.{i}.attention.key": ("{base}transformer.layer.{i}.attention.k_lin", LINEAR),
        "encoder.{i}.attention.value": ("{base}transformer.layer.{i}.attention.v_lin", LINEAR),
        "encoder.{i}.attention.output": ("{base}transformer.layer.{i}.attention.out_lin", LINEAR),
        "encoder.{i}.attention_norm": ("{base}transformer.layer.{i}.sa_layer_norm", NORM),
        "encoder.{i}.feed_forward.inner": ("{base}transformer.layer.{i}.ffn.lin1", LINEAR),
        "encoder.{i}.feed_forward.outer": ("{base}transformer.layer.{i}.ffn.lin2", LINEAR),
        "encoder.{i}.feed_forward_norm": ("{base}transformer.layer.{i}.output_layer_norm", NORM),
        "mlm.transform": ("vocab_transform", LINEAR),
        "mlm.norm": ("vocab_layer_norm", NORM),
        "mlm": ("vocab_projector", (Leaf("bias", "bias"),)),
        "classifier": ("classifier", LINEAR),
        "qa": ("qa_outputs", LINEAR),
    },
    tied={"vocab_projector.weight": "embeddings.token.table"},
    buffers=("{base}embeddings.position_ids",), foreign=(),
    fields={"d_model": ("dim", 768), "num_heads": ("n_heads", 12), "d_ff": ("hidden_dim", 3072),
            "num_layers": ("n_layers", 6), "vocab_size": ("vocab_size", 30522),
            "max_positions": ("max_position_embeddings", 512), "activation": ("activation", "gelu"),
            "dropout": ("dropout", 0.1)},
    fixed={},
    # DistilBERT's epsilon is written in its code (1e-12), not in config.json; sinusoidal_pos_embds only
    # initializes the position table, which the file then holds
    constants={**BERT_CONSTANTS, "layer_norm_eps": 1e-12, "type_vocab_size": 0, "pooler": False,
               "checkpoint": "distilbert"},
    write=lambda cfg, cls: {"attention_dropout": cfg.dropout, "sinusoidal_pos_embds": False, **_labels(cfg)},
)


def _read_electra(hf, cls):
    """ELECTRA projects its embeddings only when they are narrower than the layers."""
    E = hf.get("embedding_size", 128)
    return {"embedding_size": None if E == hf.get("hidden_size", 256) else E}


ELECTRA_HF = Checkpoint(
    model_type="electra",
    classes={"ElectraModel": "none", "ElectraForPreTraining": "discriminator", "ElectraForQuestionAnswering": "qa",
             "ElectraForTokenClassification": "token_classification"},
    base_class="ElectraModel", prefix="electra.",
    modules={
        **EMBEDDINGS, "embeddings.projection": ("{base}embeddings_project", LINEAR),
        **_bert_layer("{base}encoder.layer.{i}"),
        "discriminator.transform": ("discriminator_predictions.dense", LINEAR),
        "discriminator.prediction": ("discriminator_predictions.dense_prediction", LINEAR),
        "classifier": ("classifier", LINEAR),
        "qa": ("qa_outputs", LINEAR),
    },
    tied={}, buffers=BUFFERS, foreign=(),
    fields={**BERT_FIELDS, "d_model": ("hidden_size", 256), "num_heads": ("num_attention_heads", 4),
            "d_ff": ("intermediate_size", 1024)},
    fixed=BERT_FIXED,
    constants={k: v for k, v in {**BERT_CONSTANTS, "pooler": False, "checkpoint": "electra"}.items()
               if k != "embedding_size"},
    read=_read_electra,
    write=lambda cfg, cls: {"attention_probs_dropout_prob": cfg.dropout, "embedding_size": cfg.embedding_size
                            or cfg.d_model, **_labels(cfg)},
)

def _write_albert(cfg):
    if cfg.embedding_size is None:  # AlbertModel always maps its embeddings in, E = D or not
        raise ValueError("Config.embedding_size must be set for a Hugging Face albert (its embeddings always pass "
                         "through embedding_hidden_mapping_in); received embedding_size=None")
    return {"attention_probs_dropout_prob": cfg.dropout, "classifier_dropout_prob": cfg.dropout,
            "num_hidden_groups": cfg.num_layer_groups or cfg.num_layers, **_labels(cfg)}


ALBERT_LAYER = "{base}encoder.albert_layer_groups.{i}.albert_layers.0"
ALBERT_HF = Checkpoint(
    model_type="albert",
    classes={"AlbertModel": "none", "AlbertForMaskedLM": "mlm", "AlbertForQuestionAnswering": "qa",
             "AlbertForTokenClassification": "token_classification"},
    base_class="AlbertModel", prefix="albert.",
    modules={
        **EMBEDDINGS, "embeddings.projection": ("{base}encoder.embedding_hidden_mapping_in", LINEAR),
        "encoder.{i}.attention.query": (f"{ALBERT_LAYER}.attention.query", LINEAR),
        "encoder.{i}.attention.key": (f"{ALBERT_LAYER}.attention.key", LINEAR),
        "encoder.{i}.attention.value": (f"{ALBERT_LAYER}.attention.value", LINEAR),
        "encoder.{i}.attention.output": (f"{ALBERT_LAYER}.attention.dense", LINEAR),
        "encoder.{i}.attention_norm": (f"{ALBERT_LAYER}.attention.LayerNorm", NORM),
        "encoder.{i}.feed_forward.inner": (f"{ALBERT_LAYER}.ffn", LINEAR),
        "encoder.{i}.feed_forward.outer": (f"{ALBERT_LAYER}.ffn_output", LINEAR),
        "encoder.{i}.feed_forward_norm": (f"{ALBERT_LAYER}.full_layer_layer_norm", NORM),
        "pooler": ("{base}pooler", LINEAR),
        "mlm.transform": ("predictions.dense", LINEAR),
        "mlm.norm": ("predictions.LayerNorm", NORM),
        "mlm": ("predictions", (Leaf("bias", "bias"),)),
        "classifier": ("classifier", LINEAR),
        "qa": ("qa_outputs", LINEAR),
    },
    tied={"predictions.decoder.weight": "embeddings.token.table", "predictions.decoder.bias": "mlm.bias"},
    buffers=BUFFERS, foreign=("sop_classifier.classifier.weight", "sop_classifier.classifier.bias"),
    fields={**BERT_FIELDS, "d_model": ("hidden_size", 4096), "num_heads": ("num_attention_heads", 64),
            "d_ff": ("intermediate_size", 16384), "vocab_size": ("vocab_size", 30000),
            "activation": ("hidden_act", "gelu_new"), "dropout": ("hidden_dropout_prob", 0.0),
            "embedding_size": ("embedding_size", 128), "num_layer_groups": ("num_hidden_groups", 1)},
    # every released ALBERT has one layer a group; inner_group_num > 1 would run several in turn
    fixed={**BERT_FIXED, "inner_group_num": 1},
    constants={k: v for k, v in {**BERT_CONSTANTS, "checkpoint": "albert"}.items()
               if k not in ("embedding_size", "num_layer_groups")},
    layers="num_layer_groups",
    write=lambda cfg, cls: _write_albert(cfg),
)

# ------------------------------------------------------------------------------ keras-hub

KERAS_LAYER = {
    "encoder.{i}.attention.query": ("transformer_layer_{i}/self_attention_layer/query", HEADS_IN),
    "encoder.{i}.attention.key": ("transformer_layer_{i}/self_attention_layer/key", HEADS_IN),
    "encoder.{i}.attention.value": ("transformer_layer_{i}/self_attention_layer/value", HEADS_IN),
    "encoder.{i}.attention.output": ("transformer_layer_{i}/self_attention_layer/attention_output", HEADS_OUT),
    "encoder.{i}.attention_norm": ("transformer_layer_{i}/self_attention_layer_norm", KERAS_NORM),
    "encoder.{i}.feed_forward.inner": ("transformer_layer_{i}/feedforward_intermediate_dense", DENSE),
    "encoder.{i}.feed_forward.outer": ("transformer_layer_{i}/feedforward_output_dense", DENSE),
    "encoder.{i}.feed_forward_norm": ("transformer_layer_{i}/feedforward_layer_norm", KERAS_NORM),
}
KERAS_EMBEDDINGS = {
    "embeddings.token": ("token_embedding", TABLE),
    "embeddings.position": ("position_embedding", TABLE),
    "embeddings.segment": ("segment_embedding", TABLE),
    "embeddings.norm": ("embeddings_layer_norm", KERAS_NORM),
}
PLAIN = {"use_bias": True, "position": "learned", "scale_embeddings": False, "head": "none",
         "attention_impl": "reference"}
TOKENS = {"input_ids": ("token_ids", None), "attention_mask": ("padding_mask", "ones")}
SEGMENTS = {**TOKENS, "token_type_ids": ("segment_ids", "zeros")}

KERAS_HUB = (
    KerasHub(
        backbone="BertBackbone",
        modules={**KERAS_EMBEDDINGS, **KERAS_LAYER, "pooler": ("pooled_dense", DENSE)},
        # BertBackbone hard-codes the tanh GELU (Google's original BERT code did too; the paper and
        # transformers use erf) and the published epsilon.
        numerics={"activation": "gelu_tanh", "layer_norm_eps": 1e-12, "norm_first": False, "causal": False},
        required={**PLAIN, "pooler": True, "embedding_size": None, "num_layer_groups": None, "pad_positions": False},
        dims=lambda cfg: dict(vocabulary_size=cfg.vocab_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                              hidden_dim=cfg.d_model, intermediate_dim=cfg.d_ff, dropout=cfg.dropout,
                              max_sequence_length=cfg.max_positions, num_segments=cfg.type_vocab_size),
        inputs=SEGMENTS,
        outputs={"last_hidden_state": "sequence_output", "pooled_output": "pooled_output"},
        model_type="bert"),
    # RobertaBackbone: epsilon 1e-5 and erf GELU as published; positions 0..T-1 of a table without
    # RoBERTa's first pad + 1 rows (so right-padded rows only, and padded positions are its own); no
    # segment table (transformers' one row is zero in every released checkpoint); no pooler.
    KerasHub(
        backbone="RobertaBackbone",
        modules={"embeddings.token": ("embeddings/token_embedding", TABLE),
                 "embeddings.position": ("embeddings/position_embedding", (Leaf("table", "embeddings",
                                                                                "padding_offset"),)),
                 "embeddings.norm": ("embeddings_layer_norm", KERAS_NORM), **KERAS_LAYER},
        numerics={"activation": "gelu", "layer_norm_eps": 1e-5},
        required={**PLAIN, "embedding_size": None, "num_layer_groups": None},
        dims=lambda cfg: dict(vocabulary_size=cfg.vocab_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                              hidden_dim=cfg.d_model, intermediate_dim=cfg.d_ff, dropout=cfg.dropout,
                              max_sequence_length=cfg.max_positions),
        inputs=TOKENS, outputs={"last_hidden_state": None},
        model_type="roberta", absent=("embeddings.segment.table", "pooler.kernel", "pooler.bias"),
        padded_positions=False),
    KerasHub(
        backbone="DistilBertBackbone",
        modules={"embeddings.token": ("token_and_position_embedding/token_embedding", TABLE),
                 "embeddings.position": ("token_and_position_embedding/position_embedding", TABLE),
                 "embeddings.norm": ("embeddings_layer_norm", KERAS_NORM), **KERAS_LAYER},
        numerics={"activation": "gelu", "layer_norm_eps": 1e-12},
        required=PLAIN,
        dims=lambda cfg: dict(vocabulary_size=cfg.vocab_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                              hidden_dim=cfg.d_model, intermediate_dim=cfg.d_ff, dropout=cfg.dropout,
                              max_sequence_length=cfg.max_positions),
        inputs=TOKENS, outputs={"last_hidden_state": None}, model_type="distilbert"),
    # ElectraBackbone hard-codes the tanh GELU (transformers' ELECTRA checkpoints use erf) and adds a
    # tanh pooler (`pooled_dense`) transformers' ElectraModel does not have.
    KerasHub(
        backbone="ElectraBackbone",
        modules={**KERAS_EMBEDDINGS, "embeddings.projection": ("embeddings_projection", DENSE), **KERAS_LAYER},
        numerics={"activation": "gelu_tanh", "layer_norm_eps": 1e-12},
        required={**PLAIN, "num_layer_groups": None},
        dims=lambda cfg: dict(vocab_size=cfg.vocab_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                              hidden_dim=cfg.d_model, embedding_dim=cfg.embedding_size or cfg.d_model,
                              intermediate_dim=cfg.d_ff, dropout=cfg.dropout, max_sequence_length=cfg.max_positions,
                              num_segments=cfg.type_vocab_size),
        inputs=SEGMENTS, outputs={"last_hidden_state": "sequence_output"}, model_type="electra",
        extra=("pooled_dense",)),
    # AlbertBackbone: the tanh GELU (= transformers' gelu_new, ALBERT's own), epsilon 1e-12; each group
    # runs num_layers / num_groups consecutive layers, as transformers' int(i / (L / G)) when G divides L.
    KerasHub(
        backbone="AlbertBackbone",
        modules={**KERAS_EMBEDDINGS, "embeddings.projection": ("embedding_projection", DENSE),
                 **{k: (v.replace("transformer_layer_{i}", "group_{i}_inner_layer_0"), leaves)
                    for k, (v, leaves) in KERAS_LAYER.items()},
                 "pooler": ("pooled_dense", DENSE)},
        numerics={"activation": "gelu_tanh", "layer_norm_eps": 1e-12},
        required=PLAIN,
        dims=lambda cfg: dict(vocabulary_size=cfg.vocab_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                              embedding_dim=cfg.embedding_size or cfg.d_model, hidden_dim=cfg.d_model,
                              intermediate_dim=cfg.d_ff, num_groups=cfg.num_layer_groups or cfg.num_layers,
                              num_inner_repetitions=1, dropout=cfg.dropout, max_sequence_length=cfg.max_positions,
                              num_segments=cfg.type_vocab_size),
        inputs=SEGMENTS, outputs={"last_hidden_state": "sequence_output", "pooled_output": "pooled_output"},
        model_type="albert"),
)

# ------------------------------------------------------------------------------ walkthroughs

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


# The same RoBERTa on two rows of the same three tokens, right- and left-padded: the positions come from
# the ids, so both rows' real tokens sit at 2, 3, 4 and come out the same.
ROBERTA_WALKTHROUGH = Walkthrough(
    "A one-layer RoBERTa (D = 8, 2 heads, pad id 1) on the tokens 5 7 9, right-padded in row 0 and "
    "left-padded in row 1: positions are computed from the ids.",
    dict(d_model=8, num_heads=2, d_ff=16, vocab_size=11, max_positions=10, num_layers=1),
    {"input_ids": [[5, 7, 9, 1, 1], [1, 1, 5, 7, 9]], "attention_mask": [[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]]},
    (Step("embeddings.position.output", "The position rows each token reads: the real tokens 5 7 9 read rows "
                                        "2, 3, 4 in both rows, every pad reads row 1 (the pad id's own).",
          "keras-hub's RobertaBackbone numbers 0..T-1 over rows 2.., so it agrees for right padding only."),
     Step("embeddings.output", "Token + position + the one segment row, layer-normed (eps 1e-5): row 0's "
                               "positions 0..2 equal row 1's 2..4.", "transformers.RobertaModel's hidden_states[0]."),
     Step("encoder.0.attention.probs", "Each real token attends to the three real tokens only; the pads get 0."),
     Step("encoder.0.output", "The layer's output: the real tokens agree across the two rows to the last bits."),
     Step("pooled", "The pooler on position 0: a real token in row 0, a pad in row 1 (so left padding "
                    "changes the pooled output).")),
    shows=("pad_token_id", "pad_positions", "max_positions", "type_vocab_size", "layer_norm_eps"),
    transformers_steps={"embeddings.output": ("hidden_states", 0), "encoder.0.attention.probs": ("attentions", 0),
                        "encoder.0.output": ("hidden_states", 1)},
)

ALBERT_WALKTHROUGH = Walkthrough(
    "A three-layer ALBERT (E = 4, D = 8, 2 heads) with one layer group: the same layer runs three times.",
    dict(d_model=8, num_heads=2, d_ff=16, embedding_size=4, vocab_size=11, max_positions=8, num_layers=3),
    {"input_ids": [[2, 7, 7, 5]], "attention_mask": [[1, 1, 1, 0]], "token_type_ids": [[0, 0, 1, 1]]},
    (Step("embeddings.norm.output", "Token + position + segment rows, E = 4 wide, layer-normed."),
     Step("embeddings.output", "Projected to D = 8: V E + E D parameters instead of V D.",
          "transformers.AlbertModel's hidden_states[0] (after embedding_hidden_mapping_in)."),
     Step("encoder.0.output", "Step 1: layer group 0."),
     Step("encoder.0.output#1", "Step 2: the same weights on step 1's output.",
          "transformers.AlbertModel's hidden_states[2]."),
     Step("encoder.0.output#2", "Step 3: again; three steps of compute, one layer of parameters."),
     Step("pooled", "The pooler on position 0.")),
    shows=("embedding_size", "num_layers", "num_layer_groups", "activation"),
    transformers_steps={"embeddings.output": ("hidden_states", 0), "encoder.0.output#1": ("hidden_states", 2),
                        "encoder.0.output#2": ("hidden_states", 3), "pooled": ("pooler_output", None)},
)

ROBERTA_TINY = dict(ROBERTA, vocab_size=97, max_positions=34)
ALBERT_TINY = dict(ALBERT, vocab_size=97, embedding_size=16, num_layers=3)

FAMILY = Family(
    entry=Entry("bert", "Bert", TINY, token_inputs,
                {"default": V(options={"segments": True}), "mlm": V({"head": "mlm"}),
                 "classification": V({"head": "classification"}, {"segments": True}), "qa": V({"head": "qa"}),
                 "token_classification": V({"head": "token_classification"}, {"segments": True}),
                 "fused": V({"attention_impl": "fused"}, {"segments": True}),
                 "roberta": V(ROBERTA_TINY),
                 "distilbert": V({"type_vocab_size": 0, "pooler": False, "checkpoint": "distilbert"}),
                 "electra": V({"embedding_size": 16, "pooler": False, "checkpoint": "electra"}, {"segments": True}),
                 "discriminator": V({"embedding_size": 16, "pooler": False, "head": "discriminator",
                                     "checkpoint": "electra"}),
                 "albert": V(ALBERT_TINY, {"segments": True})},
                is_model=True),
    presets=PRESETS,
    run_inputs={"segments": True},
    tasks={"mlm": Task("mlm"), "classification": Task("classification")},
    pretraining="mlm",
    checkpoints=(HF, ROBERTA_HF, DISTILBERT_HF, ELECTRA_HF, ALBERT_HF), keras_hub=KERAS_HUB,
    walkthrough=WALKTHROUGH, variant_walkthroughs={"roberta": ROBERTA_WALKTHROUGH, "albert": ALBERT_WALKTHROUGH},
    base_preset="bert-base",
    stack=STACK,
)
