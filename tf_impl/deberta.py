"""Mirrors `numpy_ref.deberta`.

Differs: `Deberta` is a `keras.Model`; the padding factor is cast to the compute dtype.
"""
from keras import ops

from conformance.core import checks, trace
from tf_impl._layer import Layer, Model
from tf_impl.activations import Dropout
from tf_impl.blocks import residual
from tf_impl.disentangled import DisentangledAttention
from tf_impl.embeddings import RelativeEmbedding, TokenEmbedding
from tf_impl.feed_forward import FeedForward
from tf_impl.linear import Linear
from tf_impl.normalization import LayerNorm


class DebertaEmbeddings(Layer):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.token = TokenEmbedding(cfg, name="token", dtype=self.dtype_policy)
        self.norm = LayerNorm(cfg, name="norm", dtype=self.dtype_policy)
        self.dropout = Dropout(cfg, name="dropout", dtype=self.dtype_policy)

    def call(self, input_ids, attention_mask=None):
        x = self.norm(self.token(input_ids))                                     # (B, T, D)
        if attention_mask is not None:
            x = x * ops.cast(attention_mask[..., None], x.dtype)                 # (B, T, D)
        return trace.tap_for(self)("output", self.dropout(x))                    # (B, T, D)


class DebertaLayer(Layer):
    """BERT's post-norm layer around disentangled attention: LN(x + Attn(x, R)), LN(x + FFN(x))."""

    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        policy = self.dtype_policy
        self.attention = DisentangledAttention(cfg, name="attention", dtype=policy)
        self.attention_norm = LayerNorm(cfg, name="attention_norm", dtype=policy)
        self.attention_dropout = Dropout(cfg, name="attention_dropout", dtype=policy)
        self.feed_forward = FeedForward(cfg, name="feed_forward", dtype=policy)
        self.feed_forward_norm = LayerNorm(cfg, name="feed_forward_norm", dtype=policy)
        self.feed_forward_dropout = Dropout(cfg, name="feed_forward_dropout", dtype=policy)

    def call(self, x, rel, mask=None):
        """x: (B, T, D)  rel: (2k, D)  mask: (B, T) padding, True = attend."""
        tap = trace.tap_for(self)
        x = residual(x, lambda h: self.attention(h, rel, mask=mask), self.attention_norm,
                     self.attention_dropout, False)                                          # (B, T, D)
        x = residual(x, self.feed_forward, self.feed_forward_norm, self.feed_forward_dropout, False)  # (B, T, D)
        return tap("output", x)


class Deberta(Model):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        dtype = self.dtype_policy
        self.embeddings = DebertaEmbeddings(cfg, name="embeddings", dtype=dtype)
        self.relative = RelativeEmbedding(cfg, name="relative", dtype=dtype)
        self.relative_norm = LayerNorm(cfg, name="relative_norm", dtype=dtype)
        self.encoder = [DebertaLayer(cfg, name=f"encoder.{i}", dtype=dtype) for i in range(cfg.num_layers)]
        self.classifier = (Linear(cfg.d_model, cfg.num_labels, name="classifier", dtype=dtype)
                           if cfg.head == "token_classification" else None)

    def call(self, input_ids, attention_mask=None):
        """input_ids, attention_mask (1 = attend): (B, T)."""
        cfg = self.cfg
        checks.token_inputs(checks.spec(input_ids), checks.spec(attention_mask))
        tap = trace.tap_for(self)
        h = self.embeddings(input_ids, attention_mask)             # (B, T, D)
        rows = ops.arange(2 * cfg.relative_span)                   # (2k,) every row of the relative table
        rel = self.relative_norm(self.relative(rows))              # (2k, D), normed once for every layer
        for layer in self.encoder:
            h = layer(h, rel, mask=attention_mask)                 # (B, T, D)
        out = {"last_hidden_state": h}
        if self.classifier is not None:
            out["logits"] = tap("logits", self.classifier(h))      # (B, T, num_labels)
        return out
