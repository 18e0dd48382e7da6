"""Mirrors `numpy_ref.blocks`. No differences beyond the torch building blocks."""
from torch import nn

from conformance.core import trace
from torch_impl.activations import Dropout
from torch_impl.attention import MultiHeadAttention
from torch_impl.feed_forward import FeedForward
from torch_impl.normalization import LayerNorm


def residual(x, sublayer, norm, dropout, norm_first):
    """One residual sub-block: post-norm LN(x + f(x)) or pre-norm x + f(LN(x))."""
    if norm_first:
        return x + dropout(sublayer(norm(x)))
    return norm(x + dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm_first = cfg.norm_first
        self.attention = MultiHeadAttention(cfg)
        self.attention_norm = LayerNorm(cfg)
        self.attention_dropout = Dropout(cfg)
        self.feed_forward = FeedForward(cfg)
        self.feed_forward_norm = LayerNorm(cfg)
        self.feed_forward_dropout = Dropout(cfg)

    def forward(self, x, mask=None, cache=None):
        """x: (B, T, D)  mask: (B, S) padding, True = attend."""
        tap = trace.tap_for(self)
        x = residual(x, lambda h: self.attention(h, mask=mask, cache=cache),
                     self.attention_norm, self.attention_dropout, self.norm_first)    # (B, T, D)
        x = residual(x, self.feed_forward, self.feed_forward_norm,
                     self.feed_forward_dropout, self.norm_first)                      # (B, T, D)
        return tap("output", x)


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm_first = cfg.norm_first
        self.self_attention = MultiHeadAttention(cfg, causal=True)
        self.self_attention_norm = LayerNorm(cfg)
        self.self_attention_dropout = Dropout(cfg)
        self.cross_attention = MultiHeadAttention(cfg, causal=False)
        self.cross_attention_norm = LayerNorm(cfg)
        self.cross_attention_dropout = Dropout(cfg)
        self.feed_forward = FeedForward(cfg)
        self.feed_forward_norm = LayerNorm(cfg)
        self.feed_forward_dropout = Dropout(cfg)

    def forward(self, x, memory, mask=None, memory_mask=None):
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
