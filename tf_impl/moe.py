"""Mirrors `numpy_ref.moe`. Differs: the experts are a list of Keras layers named `experts.{e}`; a
token's experts come from `keras.ops.top_k`, the routed tokens from `keras.ops.nonzero` (a tensor of
data-dependent length: eager, or a TensorFlow graph; not a JAX jit), and their outputs are added back
with `keras.ops.scatter`. Not here: the backwards (TensorFlow's).
Only here: `one_hot` (one-hot rows as a comparison with `arange`: tf2onnx's OneHot node fails onnx.checker)."""
from keras import ops

from conformance.core import checks, trace
from tf_impl._layer import Layer
from tf_impl.activations import softmax
from tf_impl.feed_forward import GatedFeedForward
from tf_impl.linear import Linear


def top_k(probs, k):
    return ops.top_k(probs, k, sorted=True)[1]                                    # (N, k)


def one_hot(index, E, dtype):
    """(..., E) 1 at each index: a comparison, which tf2onnx exports (its OneHot node fails onnx.checker)."""
    return ops.cast(ops.expand_dims(index, -1) == ops.arange(E, dtype=index.dtype), dtype)


def routing_weights(probs, index):
    top = ops.take_along_axis(probs, index, axis=-1)                              # (N, k)
    chosen = one_hot(index, probs.shape[-1], probs.dtype)                         # N x k one-hot rows of E
    return ops.sum(chosen * (top / ops.sum(top, axis=-1, keepdims=True))[..., None], axis=1)  # (N, E)


def expert_fractions(indices, num_experts, mask=None):
    mask = ops.ones(ops.shape(indices[0])[:1], "float64") if mask is None else ops.cast(mask, "float64")
    counts = sum(ops.sum(one_hot(i, num_experts, "float64") * mask[:, None, None], axis=(0, 1))
                 for i in indices)
    return counts / (len(indices) * ops.sum(mask))                                # (E,)


def load_balancing_loss(probs, indices, mask=None):
    E, dtype = probs[0].shape[-1], probs[0].dtype
    m = ops.ones(ops.shape(probs[0])[:1], dtype) if mask is None else ops.cast(mask, dtype)
    f = ops.cast(expert_fractions(indices, E, m), dtype)
    P = sum(ops.sum(p * m[:, None], axis=0) for p in probs) / (len(probs) * ops.sum(m))  # (E,)
    return E * ops.sum(f * P)


class SparseMoeBlock(Layer):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.k = cfg.experts_per_token
        self.router = Linear(cfg.d_model, cfg.num_experts, use_bias=False, name="router", dtype=self.dtype_policy)
        self.experts = [GatedFeedForward(cfg, name=f"experts.{e}", dtype=self.dtype_policy)
                        for e in range(cfg.num_experts)]
        self.router_probs = self.router_index = None

    def call(self, x):
        checks.last_axis("x", checks.shape_of(x), self.router.d_in, "d_model")
        tap = trace.tap_for(self)
        h = ops.reshape(x, (-1, ops.shape(x)[-1]))                                # (N, D)
        probs = tap("probs", softmax(self.router(h)))                             # (N, E)
        index = top_k(probs, self.k)                                              # (N, k)
        routing = tap("routing", routing_weights(probs, index))                   # (N, E)
        y = ops.zeros_like(h)                                                     # (N, D)
        for e, expert in enumerate(self.experts):  # every expert runs, on the tokens that chose it (maybe none)
            token = ops.nonzero(ops.any(index == e, axis=-1))[0]                   # (n_e,)
            chosen = ops.take(routing[:, e:e + 1], token, axis=0) * expert(ops.take(h, token, axis=0))
            y = y + ops.scatter(token[:, None], chosen, ops.shape(h))             # (n_e, D)
        self.router_probs, self.router_index = probs, index
        return tap("output", ops.reshape(y, ops.shape(x)))                        # (..., D)
