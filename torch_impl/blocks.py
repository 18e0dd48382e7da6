"""Mirrors `numpy_ref.blocks`. No differences beyond the torch building blocks."""
from torch import nn

from conformance.core import checks, trace
from torch_impl.activations import Dropout
from torch_impl.attention import MultiHeadAttention
from torch_impl.feed_forward import FeedForward, GatedFeedForward
from torch_impl.moe import SparseMoeBlock
from torch_impl.normalization import LayerNorm, RMSNorm


def norm_for(cfg):
    """The layer norm of `cfg.norm`: LayerNorm, or RMSNorm."""
    return RMSNorm(cfg) if cfg.norm == "rms" else LayerNorm(cfg)


def feed_forward_for(cfg):
    """The feed-forward of `cfg.feed_forward`: act(x W1) W2, down(act(gate x) * up x), or the sparse MoE."""
    if cfg.feed_forward == "moe":
        return SparseMoeBlock(cfg)
    return GatedFeedForward(cfg) if cfg.feed_forward == "gated" else FeedForward(cfg)


def residual(x, sublayer, norm, dropout, norm_first, output_norm=None):
    """One residual sub-block: post-norm LN(x + f(x)) or pre-norm x + f(LN(x)) (x + LN_out(f(LN(x))))."""
    if norm_first:
        h = sublayer(norm(x))
        return x + dropout(h if output_norm is None else output_norm(h))
    return norm(x + dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """`sliding`: does this layer attend through the config's window (None: whenever one is set)."""

    def __init__(self, cfg, sliding=None):
        super().__init__()
        self.norm_first = cfg.norm_first
        self.attention = MultiHeadAttention(cfg, sliding=sliding)
        self.attention_norm = norm_for(cfg)
        self.attention_output_norm = norm_for(cfg) if cfg.sandwich_norm else None
        self.attention_dropout = Dropout(cfg)
        self.feed_forward = feed_forward_for(cfg)
        self.feed_forward_norm = norm_for(cfg)
        self.feed_forward_output_norm = norm_for(cfg) if cfg.sandwich_norm else None
        self.feed_forward_dropout = Dropout(cfg)

    def forward(self, x, mask=None, cache=None, position_ids=None, position_bias=None):
        """x: (B, T, D)  mask: (B, S) padding, True = attend  position_ids: (B, T) for a rotary attention
        position_bias: (1 or B, H, T, S) added to the attention scores (T5)."""
        tap = trace.tap_for(self)
        x = residual(x, lambda h: self.attention(h, mask=mask, cache=cache, position_ids=position_ids,
                                                 position_bias=position_bias),
                     self.attention_norm, self.attention_dropout, self.norm_first,
                     self.attention_output_norm)                                      # (B, T, D)
        x = residual(x, self.feed_forward, self.feed_forward_norm,
                     self.feed_forward_dropout, self.norm_first, self.feed_forward_output_norm)  # (B, T, D)
        return tap("output", x)


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm_first = cfg.norm_first
        self.self_attention = MultiHeadAttention(cfg, causal=True)
        self.self_attention_norm = norm_for(cfg)
        self.self_attention_dropout = Dropout(cfg)
        self.cross_attention = MultiHeadAttention(cfg, causal=False, cross=True)
        self.cross_attention_norm = norm_for(cfg)
        self.cross_attention_dropout = Dropout(cfg)
        self.feed_forward = feed_forward_for(cfg)
        self.feed_forward_norm = norm_for(cfg)
        self.feed_forward_dropout = Dropout(cfg)

    def forward(self, x, memory=None, mask=None, memory_mask=None, cache=None, position_bias=None):
        """x: (B, T, D) decoder side  memory: (B, S, D) encoder output.
        mask: (B, T) decoder padding  memory_mask: (B, S) encoder padding.
        cache: this layer's dict, the self-attention's keys and values (`key`, `value`, grown by each
        call) and the cross-attention's (`cross_key`, `cross_value`, from memory on the first call;
        memory may be None after). position_bias: (1 or B, H, T, past + T) on the self-attention (T5)."""
        tap = trace.tap_for(self)
        x = residual(x, lambda h: self.self_attention(h, mask=mask, cache=cache, position_bias=position_bias),
                     self.self_attention_norm, self.self_attention_dropout, self.norm_first)
        x = residual(x, lambda h: self.cross_attention(h, context=memory, mask=memory_mask, cache=cache),
                     self.cross_attention_norm, self.cross_attention_dropout, self.norm_first)
        x = residual(x, self.feed_forward, self.feed_forward_norm,
                     self.feed_forward_dropout, self.norm_first)                      # (B, T, D)
        return tap("output", x)


def cache_length(cache) -> int:
    """The tokens a cache holds: its first layer's keys' (none before the first call fills them)."""
    return cache[0]["key"].shape[2] if cache and "key" in cache[0] else 0


def encoder_memory(model, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, cache):
    """An encoder-decoder's source as (memory (B, S, D), its mask): encoded on a first call, None from a
    filled cache (its cross-attention keys and values hold it). With a decoder, checks the target's
    inputs and gives an empty cache (a list) one dict per decoder layer, holding the source mask."""
    if cache:                                                                  # the source is encoded
        memory, attention_mask = None, cache[0].get("source_mask")
    else:
        checks.token_inputs(checks.spec(input_ids), checks.spec(attention_mask))
        memory = model.encode(input_ids, attention_mask)                        # (B, S, D)
    checks.decoder_inputs(decoder_input_ids, model.cfg.kind, model.cfg.head)
    if model.cfg.head == "encoder":
        return memory, attention_mask
    checks.token_inputs(checks.spec(decoder_input_ids), checks.spec(decoder_attention_mask),
                        past=cache_length(cache), prefix="decoder_")
    if cache is not None and not cache:
        cache.extend(({} if attention_mask is None else {"source_mask": attention_mask}) for _ in model.decoder)
    return memory, attention_mask
