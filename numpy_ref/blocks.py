"""Encoder and decoder layers: attention and feed-forward, each wrapped in a residual
connection and a layer norm.

Post-norm (2017 paper, BERT), the norm after the residual sum:
    x = LN(x + Attention(x));      x = LN(x + FFN(x))
Pre-norm (GPT-2), the norm on the branch only:
    x = x + Attention(LN(x));      x = x + FFN(LN(x))
Pre-norm leaves an unnormalized identity path from input to output, which is why deep
pre-norm stacks train without warm-up and need one final layer norm at the top.

The decoder layer adds cross-attention between its causal self-attention and its
feed-forward: queries from the decoder, keys and values from the encoder's output. With a
cache, the self-attention's keys and values grow by the new tokens each call while the
cross-attention's are computed from the encoder's output once and read after: decoding step t
costs O(t + S), not O(t^2 + t S). T5's decoder layer is this one, pre-norm, with RMSNorm, no
biases and a relative position bias on the self-attention scores (`position_bias`, computed once
per stack); BART's is post-norm, as the 2017 paper's.

The LLaMA family's layer is the pre-norm encoder layer with other parts (config fields, not another class): RMSNorm
(`cfg.norm`), the gated feed-forward or Mixtral's experts (`cfg.feed_forward`), rotary grouped-query attention and,
per layer, a sliding window (`cfg.sliding(i)`). Gemma 2 adds a norm on each sub-layer's output too, "sandwich" norms:
    x = x + LN_out(Attention(LN(x)));   x = x + LN_out(FFN(LN(x)))

A layer's costs are its sub-blocks' (`residual_costs`): the sub-layer, the residual add (one
FLOP an element) and the layer norm; in training each also keeps a dropout mask.
"""
from conformance.core import checks, trace
from conformance.core.costs import PER_ELEMENT, Op, elements, scoped
from numpy_ref import autograd
from numpy_ref._module import Module
from numpy_ref.activations import Dropout
from numpy_ref.attention import MultiHeadAttention
from numpy_ref.feed_forward import FeedForward, GatedFeedForward
from numpy_ref.moe import SparseMoeBlock
from numpy_ref.normalization import LayerNorm, RMSNorm


def norm_for(cfg):
    """The layer norm of `cfg.norm`: LayerNorm, or RMSNorm."""
    return RMSNorm(cfg) if cfg.norm == "rms" else LayerNorm(cfg)


def feed_forward_for(cfg):
    """The feed-forward of `cfg.feed_forward`: act(x W1) W2, down(act(gate x) * up x), or the sparse MoE."""
    return {"moe": SparseMoeBlock, "gated": GatedFeedForward}.get(cfg.feed_forward, FeedForward)(cfg)


def residual(x, sublayer, norm, dropout, norm_first, output_norm=None):
    """One residual sub-block: post-norm LN(x + f(x)) or pre-norm x + f(LN(x)) (x + LN_out(f(LN(x))))."""
    if norm_first:
        h = sublayer(norm(x))
        return x + dropout(h if output_norm is None else output_norm(h))
    return norm(x + dropout(sublayer(x)))


def residual_backward(grad, sublayer_backward, norm, dropout, norm_first, output_norm=None):
    """The backward of `residual`: y = x + f(x) gives dx = dy + f'(x)^T dy.

    The skip path passes dy to x unchanged, whatever f does. Across L pre-norm layers the
    gradient reaching the input is dy plus the branches' contributions: never a product of
    L Jacobians that could shrink or blow up, which is why deep pre-norm stacks train.
    Post-norm puts LN's backward (a projection divided by the position's std) on the skip
    path itself, once per layer: deep post-norm stacks need warm-up to survive early steps.
    """
    if norm_first:  # y = x + drop(f(LN(x))), or x + drop(LN_out(f(LN(x))))
        d_h = dropout.backward(grad)
        d_h = d_h if output_norm is None else output_norm.backward(d_h)
        return grad + norm.backward(sublayer_backward(d_h))
    d_sum = norm.backward(grad)  # y = LN(s), s = x + drop(f(x))
    return d_sum + sublayer_backward(dropout.backward(d_sum))


def residual_flops(name, sublayer_ops, norm, x, output_norm=None):
    """A residual sub-block's FLOPs: the sub-layer's, the residual add, the layer norm(s)."""
    yield from scoped(name, sublayer_ops)
    yield Op(f"{name}.residual", "elementwise", elements(x) * PER_ELEMENT["residual"])
    yield from scoped(f"{name}_norm", norm.flops(x))
    if output_norm is not None:
        yield from scoped(f"{name}_output_norm", output_norm.flops(x))


def residual_saved(name, sublayer_saved, dropout, norm, f, x, output_norm=None):
    """What a residual sub-block keeps for backward: the sub-layer's, the dropout mask, the norm's."""
    yield from scoped(name, sublayer_saved)
    yield from scoped(f"{name}_dropout", dropout.saved(f, x))
    yield from scoped(f"{name}_norm", norm.saved(f, x))
    if output_norm is not None:
        yield from scoped(f"{name}_output_norm", output_norm.saved(f, x))


class EncoderLayer(Module):
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

    def flops(self, x, position_bias=None, **_):
        yield from residual_flops("attention", self.attention.flops(x, position_bias=position_bias),
                                  self.attention_norm, x, self.attention_output_norm)
        yield from residual_flops("feed_forward", self.feed_forward.flops(x), self.feed_forward_norm, x,
                                  self.feed_forward_output_norm)

    def saved(self, f, x, masked=True, **_):
        """`masked=False`: the layer runs with no padding mask (ViT)."""
        yield from residual_saved("attention", self.attention.saved(f, x, masked=masked), self.attention_dropout,
                                  self.attention_norm, f, x, self.attention_output_norm)
        yield from residual_saved("feed_forward", self.feed_forward.saved(f, x), self.feed_forward_dropout,
                                  self.feed_forward_norm, f, x, self.feed_forward_output_norm)

    def peak(self, f, live, x, **_):
        return max(self.attention.peak(f, live, x), self.feed_forward.peak(f, live, x))

    def backward(self, grad):
        """-> dx, or (dx, dposition_bias) when a position bias was added to the scores."""
        saved = autograd.saved(self)
        grad = saved.tap("output", grad)                                                   # (B, T, D)
        grad = residual_backward(grad, self.feed_forward.backward, self.feed_forward_norm,
                                 self.feed_forward_dropout, self.norm_first,
                                 self.feed_forward_output_norm)                             # (B, T, D)
        attention_backward, d_bias = split_bias_backward(self.attention.backward, saved.inputs["position_bias"])
        grad = residual_backward(grad, attention_backward, self.attention_norm,
                                 self.attention_dropout, self.norm_first, self.attention_output_norm)  # (B, T, D)
        return grad if not d_bias else (grad, d_bias[0])


class DecoderLayer(Module):
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

    def flops(self, x, memory, position_bias=None, **_):
        yield from residual_flops("self_attention", self.self_attention.flops(x, position_bias=position_bias),
                                  self.self_attention_norm, x)
        yield from residual_flops("cross_attention", self.cross_attention.flops(x, context=memory),
                                  self.cross_attention_norm, x)
        yield from residual_flops("feed_forward", self.feed_forward.flops(x), self.feed_forward_norm, x)

    def saved(self, f, x, memory, **_):
        yield from residual_saved("self_attention", self.self_attention.saved(f, x), self.self_attention_dropout,
                                  self.self_attention_norm, f, x)
        yield from residual_saved("cross_attention", self.cross_attention.saved(f, x, context=memory),
                                  self.cross_attention_dropout, self.cross_attention_norm, f, x)
        yield from residual_saved("feed_forward", self.feed_forward.saved(f, x), self.feed_forward_dropout,
                                  self.feed_forward_norm, f, x)

    def peak(self, f, live, x, memory, **_):
        return max(self.self_attention.peak(f, live, x), self.cross_attention.peak(f, live, x, context=memory),
                   self.feed_forward.peak(f, live, x))

    def backward(self, grad):
        """-> (dx, dmemory): memory reaches the output only through cross-attention's keys and values;
        (dx, dmemory, dposition_bias) when a position bias was added to the self-attention's scores."""
        saved = autograd.saved(self)
        grad = saved.tap("output", grad)                                                   # (B, T, D)
        d_memory = []

        def cross_attention_backward(d):
            d_h, d_context = self.cross_attention.backward(d)
            d_memory.append(d_context)                                                     # (B, S, D)
            return d_h

        grad = residual_backward(grad, self.feed_forward.backward, self.feed_forward_norm,
                                 self.feed_forward_dropout, self.norm_first)
        grad = residual_backward(grad, cross_attention_backward, self.cross_attention_norm,
                                 self.cross_attention_dropout, self.norm_first)
        self_attention_backward, d_bias = split_bias_backward(self.self_attention.backward, saved.inputs["position_bias"])
        grad = residual_backward(grad, self_attention_backward, self.self_attention_norm,
                                 self.self_attention_dropout, self.norm_first)              # (B, T, D)
        return (grad, d_memory[0]) + tuple(d_bias)


def split_bias_backward(attention_backward, position_bias):
    """An attention's backward that returns only dx, and the list it puts dposition_bias in (empty when
    no bias was added): the residual sub-block's backward takes the first, the layer returns the second."""
    if position_bias is None:
        return attention_backward, []
    d_bias = []

    def backward(grad):
        d_x, d = attention_backward(grad)
        d_bias.append(d)
        return d_x
    return backward, d_bias


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
