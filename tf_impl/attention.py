"""Mirrors `numpy_ref.attention`.

Differs: masks are combined with `keras.ops.logical_and` (a 0/1 integer padding mask is cast
to bool first, as in numpy_ref). `MultiHeadAttention.output` shadows Keras's `Layer.output` (a
functional layer's output tensor) so the output projection keeps its canonical name; Keras's
`save_weights` skips attribute names that `Layer` defines, so it reaches the projection through
a private alias. The cache dict reaches `call` as the caller's object (see `tf_impl._layer`)
and is filled in place.
`fused_attention` is one `keras.ops.dot_product_attention` call, which takes (B, T, H, Dh):
the heads axis moves there and back around it, and the scale goes in as a tensor of q's dtype
(TensorFlow's `tf.cast` of a Python float rounds it through float32 first: 2e-8 off in float64).
Only here: `MultiHeadAttention.get_config` (the Config with `causal` resolved).
Own lines: `fused_attention` (the library call and its layout).
"""
from keras import ops

from conformance.core import checks, trace
from tf_impl._layer import Layer, Shadow
from tf_impl.activations import softmax
from tf_impl.linear import Linear


def causal_mask(T, S):
    """(T, S) bool: query i (at position S - T + i) sees keys 0 .. S - T + i."""
    return ops.arange(S)[None, :] <= ops.arange(T)[:, None] + (S - T)


def attention_mask(padding_mask, T, S, causal):
    """Combine a (B, S) padding mask and the causal rule into a (B, 1, T, S) mask, or None."""
    mask = None
    if padding_mask is not None:
        mask = ops.cast(padding_mask, "bool")[:, None, None, :]                 # (B, 1, 1, S)
    if causal:
        tri = causal_mask(T, S)[None, None]                                     # (1, 1, T, S)
        mask = tri if mask is None else ops.logical_and(mask, tri)              # (B, 1, T, S)
    return mask


def scaled_dot_product_attention(q, k, v, mask, cfg, tap):
    """q: (B, H, T, Dh)  k, v: (B, H, S, Dh)  mask: (B, 1, T, S) or None."""
    scores = tap("scores", ops.matmul(q, ops.swapaxes(k, -1, -2)) * cfg.scale)  # (B, H, T, S)
    probs = tap("probs", softmax(scores, mask, cfg.mask_fill))                  # (B, H, T, S)
    return tap("context", ops.matmul(probs, v))                                  # (B, H, T, Dh)


def fused_attention(q, k, v, mask, cfg):
    """The same attention as one `keras.ops.dot_product_attention` call (boolean mask, True = attend).

    A fully masked row is set to zeros here, as in `softmax`."""
    heads_second = lambda x: ops.transpose(x, (0, 2, 1, 3))  # noqa: E731  (B, H, T, Dh) <-> (B, T, H, Dh)
    scale = ops.convert_to_tensor(cfg.scale, dtype=q.dtype)
    context = ops.dot_product_attention(heads_second(q), heads_second(k), heads_second(v), mask=mask,
                                        scale=scale)                                     # (B, T, H, Dh)
    context = heads_second(context)                                                      # (B, H, T, Dh)
    if mask is not None:
        context = ops.where(ops.any(mask, axis=-1, keepdims=True), context, 0)          # (B, H, T, Dh)
    return context


def attention(q, k, v, mask, cfg, tap):
    """The attention `cfg.attention_impl` names: the reference's traced lines, or one fused call."""
    if cfg.attention_impl == "fused":
        return tap("context", fused_attention(q, k, v, mask, cfg))                # (B, H, T, Dh)
    return scaled_dot_product_attention(q, k, v, mask, cfg, tap)                 # (B, H, T, Dh)


class ScaledDotProductAttention(Layer):
    """The bare attention function as a component: q, k, v already split into heads."""

    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg

    def call(self, q, k, v, mask=None):
        checks.sdpa_inputs(checks.spec(q), checks.spec(k), checks.spec(v), checks.spec(mask))
        if self.cfg.causal:
            tri = causal_mask(q.shape[2], k.shape[2])[None, None]                # (1, 1, T, S)
            mask = tri if mask is None else ops.logical_and(mask, tri)
        return attention(q, k, v, mask, self.cfg, trace.tap_for(self))


class MultiHeadAttention(Layer):
    """Self-attention (context=None) or cross-attention over `context`."""

    output = Shadow()  # Keras's `Layer.output` property: here the output projection

    def __init__(self, cfg, causal=None, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.causal = cfg.causal if causal is None else causal
        self.query = Linear(cfg.d_model, cfg.d_model, cfg.use_bias, name="query", dtype=self.dtype_policy)
        self.key = Linear(cfg.d_model, cfg.d_model, cfg.use_bias, name="key", dtype=self.dtype_policy)
        self.value = Linear(cfg.d_model, cfg.d_model, cfg.use_bias, name="value", dtype=self.dtype_policy)
        self.output = Linear(cfg.d_model, cfg.d_model, cfg.use_bias, name="output", dtype=self.dtype_policy)
        self._saved_output = self.output  # Keras's save_weights skips names that Layer defines

    def split_heads(self, x):
        B, T, _ = ops.shape(x)  # ints, or tensors for dynamic axes under tf.function
        x = ops.reshape(x, (B, T, self.cfg.num_heads, self.cfg.head_dim))
        return ops.transpose(x, (0, 2, 1, 3))  # (B, H, T, Dh)

    def merge_heads(self, x):
        B, H, T, Dh = ops.shape(x)
        return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (B, T, H * Dh))  # (B, T, D)

    def call(self, x, context=None, mask=None, cache=None):
        """x: (B, T, D)  context: (B, S, D) or None  mask: (B, S) padding, True = attend.

        `cache`, a dict, holds the keys and values of earlier positions: new ones are
        appended, and the T queries attend to all S = past + T of them.
        """
        past = cache["key"].shape[2] if cache and "key" in cache else 0
        checks.attention_inputs(checks.spec(x), checks.spec(context), checks.spec(mask), past,
                                self.cfg.d_model)
        tap = trace.tap_for(self)
        source = x if context is None else context
        q = tap("q", self.split_heads(self.query(x)))        # (B, H, T, Dh)
        k = tap("k", self.split_heads(self.key(source)))     # (B, H, S, Dh)
        v = tap("v", self.split_heads(self.value(source)))   # (B, H, S, Dh)
        if cache is not None:
            if "key" in cache:
                k = ops.concatenate([cache["key"], k], axis=2)  # (B, H, S, Dh)
                v = ops.concatenate([cache["value"], v], axis=2)
            cache["key"], cache["value"] = k, v
        T, S = ops.shape(q)[2], ops.shape(k)[2]
        m = attention_mask(mask, T, S, self.causal)               # (B, 1, T, S)
        context_heads = attention(q, k, v, m, self.cfg, tap)                    # (B, H, T, Dh)
        return self.output(tap("merged", self.merge_heads(context_heads)))       # (B, T, D)

    def get_config(self):  # the Config with `causal` resolved: from_config rebuilds the same layer
        return {**super().get_config(), "causal": self.causal}
