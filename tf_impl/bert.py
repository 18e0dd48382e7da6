"""Mirrors `numpy_ref.bert`.

Differs: `Bert` is a `keras.Model`; the tied MLM decoder is `keras.ops.matmul` with the token
table transposed (no extra variable).
"""
from keras import ops

from conformance.core import checks, trace
from tf_impl._layer import Layer, Model
from tf_impl.activations import Activation, Dropout
from tf_impl.blocks import EncoderLayer
from tf_impl.embeddings import PositionEmbedding, SegmentEmbedding, TokenEmbedding
from tf_impl.linear import Linear
from tf_impl.normalization import LayerNorm


class BertEmbeddings(Layer):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.token = TokenEmbedding(cfg, name="token", dtype=self.dtype_policy)
        self.position = PositionEmbedding(cfg, name="position", dtype=self.dtype_policy)
        self.segment = SegmentEmbedding(cfg, name="segment", dtype=self.dtype_policy)
        self.norm = LayerNorm(cfg, name="norm", dtype=self.dtype_policy)
        self.dropout = Dropout(cfg, name="dropout", dtype=self.dtype_policy)

    def call(self, input_ids, token_type_ids):
        T = ops.shape(input_ids)[1]  # an int, or a tensor for a dynamic axis under tf.function
        positions = ops.arange(T)[None, :]                                       # (1, T)
        x = self.token(input_ids) + self.position(positions) + self.segment(token_type_ids)  # (B, T, D)
        return trace.tap_for(self)("output", self.dropout(self.norm(x)))         # (B, T, D)


class MaskedLMHead(Layer):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.transform = Linear(cfg.d_model, cfg.d_model, name="transform", dtype=self.dtype_policy)
        self.activation = Activation(cfg, name="activation", dtype=self.dtype_policy)
        self.norm = LayerNorm(cfg, name="norm", dtype=self.dtype_policy)
        self.bias = self.add_weight(shape=(cfg.vocab_size,), name="bias", initializer="zeros")

    def call(self, h, table):
        h = self.norm(self.activation(self.transform(h)))      # (B, T, D)
        return ops.matmul(h, ops.transpose(table)) + self.bias  # (B, T, V)


class Bert(Model):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        dtype = self.dtype_policy
        self.embeddings = BertEmbeddings(cfg, name="embeddings", dtype=dtype)
        self.encoder = [EncoderLayer(cfg, name=f"encoder.{i}", dtype=dtype) for i in range(cfg.num_layers)]
        self.pooler = (Linear(cfg.d_model, cfg.d_model, name="pooler", dtype=dtype)
                       if cfg.head in ("none", "classification") else None)
        self.mlm = MaskedLMHead(cfg, name="mlm", dtype=dtype) if cfg.head == "mlm" else None
        self.classifier = (Linear(cfg.d_model, cfg.num_labels, name="classifier", dtype=dtype)
                           if cfg.head == "classification" else None)
        self.qa = Linear(cfg.d_model, 2, name="qa", dtype=dtype) if cfg.head == "qa" else None

    def call(self, input_ids, attention_mask=None, token_type_ids=None):
        """input_ids, attention_mask (1 = attend), token_type_ids: (B, T)."""
        checks.token_inputs(checks.spec(input_ids), checks.spec(attention_mask), checks.spec(token_type_ids))
        if token_type_ids is None:
            token_type_ids = ops.zeros_like(input_ids)
        h = self.embeddings(input_ids, token_type_ids)             # (B, T, D)
        for layer in self.encoder:
            h = layer(h, mask=attention_mask)                      # (B, T, D)
        return self.head(h)

    def head(self, h):
        """After the last layer: the pooler and the task head. A streamed run calls it alone
        (`conformance.report.stream`)."""
        tap = trace.tap_for(self)
        out = {"last_hidden_state": h}
        if self.pooler is not None:
            out["pooled_output"] = tap("pooled", ops.tanh(self.pooler(h[:, 0])))  # (B, D)
        if self.mlm is not None:
            out["logits"] = tap("logits", self.mlm(h, self.embeddings.token.table))  # (B, T, V)
        if self.classifier is not None:
            out["logits"] = tap("logits", self.classifier(out["pooled_output"]))  # (B, num_labels)
        if self.qa is not None:
            span = self.qa(h)                                                      # (B, T, 2)
            out["start_logits"] = tap("start_logits", span[..., 0])               # (B, T)
            out["end_logits"] = tap("end_logits", span[..., 1])                   # (B, T)
        return out
