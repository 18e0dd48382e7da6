"""Mirrors `numpy_ref.tiled_attention` (the forward loop), in `keras.ops`.

Differs: the backward is the backend's own autodiff of the loop (`tf.GradientTape`, jax.grad,
torch autograd under Keras's other backends), not the blockwise recomputation of
`numpy_ref.tiled_attention_backward`: the choice that keeps the layer an ordinary Keras citizen on
every backend (saved, reloaded, jitted, traced by `keras.Model.export`), where a custom gradient would
be one backend's (`tf.custom_gradient`) or `keras.ops.custom_gradient`'s, whose gradient function
takes different arguments per backend. The cost is training memory: autodiff keeps each tile's
probabilities, (T, S) in all, as the reference does; inference memory is the loop's, linear in S.
torch_impl's `TiledAttention` is the mirror whose training memory is linear too.
"""
from keras import ops

from tf_impl.activations import softcap


def block(x, rows, cols):
    """The (rows, cols) tile of a mask or bias broadcastable to (B, H, T, S); a size-1 axis is kept whole."""
    if x is None:
        return None
    return x[..., rows if x.shape[-2] > 1 else slice(None), cols if x.shape[-1] > 1 else slice(None)]


def tiles(n, size):
    """slice(start, stop) of each block of `size` along an axis of `n`; the last may be shorter."""
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def block_scores(q_i, k_j, mask_ij, bias_ij, cfg):
    """One tile's scores exactly as the reference makes them: scale, bias, soft-cap, mask fill.
    Returns (masked scores, capped scores or None), the second for the soft-cap's backward."""
    s = ops.matmul(q_i, ops.swapaxes(k_j, -1, -2)) * cfg.scale     # (B, H, bq, bk)
    if bias_ij is not None:
        s = s + bias_ij                                              # (B, H, bq, bk)
    capped = None
    if cfg.attn_logit_softcap is not None:
        s = capped = softcap(s, cfg.attn_logit_softcap)              # (B, H, bq, bk)
    if mask_ij is not None:
        s = ops.where(mask_ij, s, cfg.mask_fill)                     # (B, H, bq, bk)
    return s, capped


def finite_or_zero(m):
    """A running max that is still -inf (every key so far masked with fill -inf) reads as 0, as in `softmax`."""
    return ops.where(ops.isfinite(m), m, 0)


def tiled_attention(q, k, v, mask, cfg, bias=None):
    """q: (B, H, T, Dh)  k, v: (B, H, S, Dh)  mask, bias: broadcastable to (B, H, T, S) or None.
    Returns (context (B, H, T, Dh), lse (B, H, T)): the rows' logsumexp is the backward's statistic."""
    T, S = q.shape[2], k.shape[2]
    context, lse = [], []
    for rows in tiles(T, cfg.attention_block_q):
        q_i = q[:, :, rows]                                          # (B, H, bq, Dh)
        m = ops.full_like(q_i[..., 0], float("-inf"))                # (B, H, bq) running max
        l = ops.zeros_like(q_i[..., 0])                              # (B, H, bq) running sum
        acc = ops.zeros_like(q_i)                                    # (B, H, bq, Dh) unnormalized output
        seen = ops.zeros_like(q_i[..., 0], dtype="bool")             # (B, H, bq) has the row a key yet
        for cols in tiles(S, cfg.attention_block_k):
            mask_ij = block(mask, rows, cols)
            s = block_scores(q_i, k[:, :, cols], mask_ij, block(bias, rows, cols), cfg)[0]  # (B, H, bq, bk)
            m_new = ops.maximum(m, ops.max(s, axis=-1))              # (B, H, bq)
            rescale = ops.exp(m - finite_or_zero(m_new))             # (B, H, bq) exp(m - m')
            p = ops.exp(s - finite_or_zero(m_new)[..., None])        # (B, H, bq, bk)
            l = rescale * l + ops.sum(p, axis=-1)                    # (B, H, bq)
            acc = rescale[..., None] * acc + ops.matmul(p, v[:, :, cols])  # (B, H, bq, Dh)
            m = m_new
            seen = ops.logical_or(seen, True if mask_ij is None else ops.any(mask_ij, axis=-1))
        total = ops.where(l > 0, l, 1)
        context.append(ops.where(seen[..., None], acc / total[..., None], 0))
        lse.append(finite_or_zero(m) + ops.log(total))
    return ops.concatenate(context, axis=2), ops.concatenate(lse, axis=2)  # (B, H, T, Dh), (B, H, T)
