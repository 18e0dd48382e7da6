"""Mirrors `numpy_ref.blocks`. No differences beyond the Keras layer plumbing."""
from conformance.core import trace
from tf_impl._layer import Layer
from tf_impl.activations import Dropout
from tf_impl.attention import MultiHeadAttention
from tf_impl.feed_forward import FeedForward
from tf_impl.normalization import LayerNorm


def residual(x, sublayer, norm, dropout, norm_first):
    """One residual sub-block: post-norm LN(x + f(x)) or pre-norm x + f(LN(x))."""
    if norm_first:
        return x + dropout(sublayer(norm(x)))
    return norm(x + dropout(sublayer(x)))


class EncoderLayer(Layer):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.norm_first = cfg.norm_first
        self.attention = MultiHeadAttention(cfg, name="attention", dtype=self.dtype_policy)
        self.attention_norm = LayerNorm(cfg, name="attention_norm", dtype=self.dtype_policy)
        self.attention_dropout = Dropout(cfg, name="attention_dropout", dtype=self.dtype_policy)
        self.feed_forward = FeedForward(cfg, name="feed_forward", dtype=self.dtype_policy)
        self.feed_forward_norm = LayerNorm(cfg, name="feed_forward_norm", dtype=self.dtype_policy)
        self.feed_forward_dropout = Dropout(cfg, name="feed_forward_dropout", dtype=self.dtype_policy)

    def call(self, x, mask=None, cache=None):
        """x: (B, T, D)  mask: (B, S) padding, True = attend."""
        tap = trace.tap_for(self)
        x = residual(x, lambda h: self.attention(h, mask=mask, cache=cache),
                     self.attention_norm, self.attention_dropout, self.norm_first)    # (B, T, D)
        x = residual(x, self.feed_forward, self.feed_forward_norm,
                     self.feed_forward_dropout, self.norm_first)                      # (B, T, D)
        return tap("output", x)


class DecoderLayer(Layer):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.norm_first = cfg.norm_first
        self.self_attention = MultiHeadAttention(cfg, causal=True, name="self_attention",
                                                 dtype=self.dtype_policy)
        self.self_attention_norm = LayerNorm(cfg, name="self_attention_norm", dtype=self.dtype_policy)
        self.self_attention_dropout = Dropout(cfg, name="self_attention_dropout",
                                              dtype=self.dtype_policy)
        self.cross_attention = MultiHeadAttention(cfg, causal=False, name="cross_attention",
                                                  dtype=self.dtype_policy)
        self.cross_attention_norm = LayerNorm(cfg, name="cross_attention_norm", dtype=self.dtype_policy)
        self.cross_attention_dropout = Dropout(cfg, name="cross_attention_dropout",
                                               dtype=self.dtype_policy)
        self.feed_forward = FeedForward(cfg, name="feed_forward", dtype=self.dtype_policy)
        self.feed_forward_norm = LayerNorm(cfg, name="feed_forward_norm", dtype=self.dtype_policy)
        self.feed_forward_dropout = Dropout(cfg, name="feed_forward_dropout", dtype=self.dtype_policy)

    def call(self, x, memory, mask=None, memory_mask=None):
        """x: (B, T, D) decoder side  memory: (B, S, D) encoder output.
        mask: (B, T) decoder padding  memory_mask: (B, S) encoder padding."""
        tap = trace.tap_for(self)
        x = residual(x, lambda h: self.self_attention(h, mask=mask),
                     self.self_attention_norm, self.self_attention_dropout, self.norm_first)
        x = residual(x, lambda h: self.cross_attention(h, context=memory, mask=memory_mask),
                     self.cross_attention_norm, self.cross_attention_dropout, self.norm_first)
        x = residual(x, self.feed_forward, self.feed_forward_norm,
                     self.feed_forward_dropout, self.norm_first)                      # (B, T, D)
        return tap("output", x)
