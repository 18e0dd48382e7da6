"""Mirrors `numpy_ref.bert`.

Differs: `Bert` is a `keras.Model` (ALBERT's shared layer is one Keras layer called L times); the
tied MLM decoder is `keras.ops.matmul` with the token table transposed (no extra variable). The
check that RoBERTa's padding sits at the ends of each row reads the ids' values, so it runs only on
concrete tensors (`tf_impl._layer.is_symbolic`), as the ids' range check does.
"""
from keras import ops

from conformance.core import checks, trace
from tf_impl._layer import Layer, Model, is_symbolic
from tf_impl.activations import Activation, Dropout
from tf_impl.blocks import EncoderLayer
from tf_impl.embeddings import PositionEmbedding, SegmentEmbedding, TokenEmbedding
from tf_impl.linear import Linear
from tf_impl.normalization import LayerNorm


def padding_positions(input_ids, pad):
    """RoBERTa's positions, from the ids alone: the real tokens of a row are numbered pad + 1,
    pad + 2, ... in order and every pad sits at `pad` (transformers' create_position_ids_from_input_ids)."""
    real = ops.cast(ops.not_equal(input_ids, pad), input_ids.dtype)             # (B, T)
    return ops.cumsum(real, axis=1) * real + pad                                 # (B, T)


class BertEmbeddings(Layer):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        E = cfg.embedding_size or cfg.d_model
        self.pad = cfg.pad_token_id if cfg.pad_positions else None
        policy = self.dtype_policy
        self.token = TokenEmbedding(cfg, E, name="token", dtype=policy)
        self.position = PositionEmbedding(cfg, E, name="position", dtype=policy)
        self.segment = SegmentEmbedding(cfg, E, name="segment", dtype=policy) if cfg.type_vocab_size else None
        self.norm = LayerNorm(cfg, E, name="norm", dtype=policy)
        self.dropout = Dropout(cfg, name="dropout", dtype=policy)
        self.projection = Linear(E, cfg.d_model, name="projection", dtype=policy) if cfg.embedding_size else None

    def call(self, input_ids, token_type_ids=None):
        T = ops.shape(input_ids)[1]  # an int, or a tensor for a dynamic axis under tf.function
        if self.pad is None:
            positions = ops.arange(T)[None, :]                                   # (1, T)
        else:
            positions = padding_positions(input_ids, self.pad)                   # (B, T)
        x = self.token(input_ids) + self.position(positions)                     # (B, T, E)
        if self.segment is not None:
            x = x + self.segment(token_type_ids)                                 # (B, T, E)
        x = self.dropout(self.norm(x))                                           # (B, T, E)
        if self.projection is not None:
            x = self.projection(x)                                               # (B, T, D)
        return trace.tap_for(self)("output", x)                                  # (B, T, D)


class MaskedLMHead(Layer):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        E = cfg.embedding_size or cfg.d_model
        self.transform = Linear(cfg.d_model, E, name="transform", dtype=self.dtype_policy)
        self.activation = Activation(cfg.replace(activation=cfg.mlm_activation or cfg.activation),
                                     name="activation", dtype=self.dtype_policy)
        self.norm = LayerNorm(cfg, E, name="norm", dtype=self.dtype_policy)
        self.bias = self.add_weight(shape=(cfg.vocab_size,), name="bias", initializer="zeros")

    def call(self, h, table):
        h = self.norm(self.activation(self.transform(h)))      # (B, T, E)
        return ops.matmul(h, ops.transpose(table)) + self.bias  # (B, T, V)


class DiscriminatorHead(Layer):
    """ELECTRA's replaced-token detector: one logit a position, act(h W1 + b1) w2 + b2."""

    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.transform = Linear(cfg.d_model, cfg.d_model, name="transform", dtype=self.dtype_policy)
        self.activation = Activation(cfg, name="activation", dtype=self.dtype_policy)
        self.prediction = Linear(cfg.d_model, 1, name="prediction", dtype=self.dtype_policy)

    def call(self, h):
        h = self.activation(self.transform(h))               # (B, T, D)
        return self.prediction(h)[..., 0]                    # (B, T)


class Bert(Model):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        dtype = self.dtype_policy
        self.embeddings = BertEmbeddings(cfg, name="embeddings", dtype=dtype)
        self.encoder = [EncoderLayer(cfg, name=f"encoder.{i}", dtype=dtype)
                        for i in range(cfg.num_layer_groups or cfg.num_layers)]
        pooled = cfg.head == "classification" or (cfg.head == "none" and cfg.pooler)
        self.pooler = Linear(cfg.d_model, cfg.d_model, name="pooler", dtype=dtype) if pooled else None
        self.mlm = MaskedLMHead(cfg, name="mlm", dtype=dtype) if cfg.head == "mlm" else None
        labels = cfg.head in ("classification", "token_classification")
        self.classifier = Linear(cfg.d_model, cfg.num_labels, name="classifier", dtype=dtype) if labels else None
        self.qa = Linear(cfg.d_model, 2, name="qa", dtype=dtype) if cfg.head == "qa" else None
        self.discriminator = (DiscriminatorHead(cfg, name="discriminator", dtype=dtype)
                              if cfg.head == "discriminator" else None)

    def call(self, input_ids, attention_mask=None, token_type_ids=None):
        """input_ids, attention_mask (1 = attend), token_type_ids: (B, T)."""
        cfg = self.cfg
        checks.token_inputs(checks.spec(input_ids), checks.spec(attention_mask), checks.spec(token_type_ids))
        if token_type_ids is not None and not cfg.type_vocab_size:
            checks.no_segments("token_type_ids")
        if cfg.pad_positions and not is_symbolic(input_ids):  # a traced id has no value to check
            checks.padding_at_the_ends("input_ids", ops.convert_to_numpy(input_ids), cfg.pad_token_id)
        if token_type_ids is None and cfg.type_vocab_size:
            token_type_ids = ops.zeros_like(input_ids)
        h = self.embeddings(input_ids, token_type_ids)             # (B, T, D)
        for i in range(cfg.num_layers):
            h = self.encoder[cfg.layer_group(i)](h, mask=attention_mask)  # (B, T, D)
        return self.head(h)

    def head(self, h):
        """After the last layer: the pooler and the task head. A streamed run calls it alone
        (`conformance.report.stream`)."""
        cfg = self.cfg
        tap = trace.tap_for(self)
        out = {"last_hidden_state": h}
        if self.pooler is not None:
            out["pooled_output"] = tap("pooled", ops.tanh(self.pooler(h[:, 0])))  # (B, D)
        if self.mlm is not None:
            out["logits"] = tap("logits", self.mlm(h, self.embeddings.token.table))  # (B, T, V)
        if self.classifier is not None:
            labelled = out["pooled_output"] if cfg.head == "classification" else h   # (B, D) or (B, T, D)
            out["logits"] = tap("logits", self.classifier(labelled))  # (B, num_labels) or (B, T, num_labels)
        if self.qa is not None:
            span = self.qa(h)                                                      # (B, T, 2)
            out["start_logits"] = tap("start_logits", span[..., 0])               # (B, T)
            out["end_logits"] = tap("end_logits", span[..., 1])                   # (B, T)
        if self.discriminator is not None:
            out["logits"] = tap("logits", self.discriminator(h))                  # (B, T)
        return out
