"""Tiled attention with the online softmax: FlashAttention's algorithm (Dao et al. 2022; the loop
order of FlashAttention-2), `Config.attention_impl="tiled"`.

The hand-written backward `tiled_attention_backward` has a twin in torch_impl only (its
autograd.Function's backward); tf_impl's GradientTape differentiates its loop.

Shape legend as in `numpy_ref.attention`; bq, bk the block sizes `cfg.attention_block_q`, `_k`.

softmax(s) v needs each row's max and sum over all S keys before any probability is known, so the
reference holds the (B, H, T, S) scores. The online softmax needs them one block of keys at a time:
for a block of queries, keep a running row max m, a running sum l of exp(s - m) and an unnormalized
output acc = sum exp(s - m) v. A new block of scores s_j moves the max to m' = max(m, rowmax(s_j)),
and what was summed against the old max is rescaled by exp(m - m'):

    l'   = exp(m - m') l   + rowsum(exp(s_j - m'))
    acc' = exp(m - m') acc + exp(s_j - m') v_j

After the last block, out = acc / l: the same numbers as softmax(s) v in exact arithmetic, in another
order of additions. Measured in float64 (tests/test_tiled_attention.py, any block sizes, masks and
soft-cap): at most 2.0e-15 of the largest output entry off the reference, 2.6e-15 for dq, dk, dv. Only (bq, bk) scores a head exist at once, so memory is linear in S; the FLOPs are the
reference's plus the rescales (`tiled_flops`). The per-row logsumexp lse = m + log l is kept for the
backward, which recomputes each block's probabilities as exp(s - lse) instead of storing them.

Each block gets what the reference applies to the whole (T, S) matrix, in the same order: the scale,
T5's position bias, Gemma 2's soft-cap, then the mask's `cfg.mask_fill`. A row that no key may
attend to (a fully masked row) gives zeros, as `softmax` defines it; a block of masked keys before
the first real one is summed against the fill and then rescaled away (exp(fill - m') = 0). The last
block of queries or keys is shorter when bq or bk does not divide T or S (a ragged tail).

Masks and biases arrive as the other implementations get them, broadcastable to (B, H, T, S): each
block reads its (rows, cols) slice (a broadcast axis of size 1 is read whole), so a padding mask
(B, 1, 1, S) stays linear; a causal or window rule comes as the (1, 1, T, S) bool the reference uses
too (one byte a pair, shared by batch and heads; the float scores are what is never materialized).
"""
import numpy as np

from numpy_ref import autograd
from numpy_ref.activations import softcap, softcap_backward


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
    s = q_i @ k_j.swapaxes(-1, -2) * cfg.scale                      # (B, H, bq, bk)
    if bias_ij is not None:
        s = s + bias_ij                                              # (B, H, bq, bk)
    capped = None
    if cfg.attn_logit_softcap is not None:
        s = capped = softcap(s, cfg.attn_logit_softcap)              # (B, H, bq, bk)
    if mask_ij is not None:
        s = np.where(mask_ij, s, np.asarray(cfg.mask_fill, s.dtype))  # (B, H, bq, bk)
    return s, capped


def finite_or_zero(m):
    """A running max that is still -inf (every key so far masked with fill -inf) reads as 0, as in `softmax`."""
    return np.where(np.isfinite(m), m, 0)


def tiled_attention(q, k, v, mask, cfg, bias=None):
    """q: (B, H, T, Dh)  k, v: (B, H, S, Dh)  mask, bias: broadcastable to (B, H, T, S) or None.
    Returns (context (B, H, T, Dh), lse (B, H, T)): the rows' logsumexp is the backward's statistic."""
    T, S = q.shape[2], k.shape[2]
    context, lse = [], []
    for rows in tiles(T, cfg.attention_block_q):
        q_i = q[:, :, rows]                                          # (B, H, bq, Dh)
        m = np.full(q_i.shape[:-1], -np.inf, dtype=q.dtype)           # (B, H, bq) running max
        l = np.zeros(q_i.shape[:-1], dtype=q.dtype)                  # (B, H, bq) running sum
        acc = np.zeros(q_i.shape, dtype=q.dtype)                     # (B, H, bq, Dh) unnormalized output
        seen = np.zeros(q_i.shape[:-1], dtype=bool)                  # (B, H, bq) has the row a key yet
        for cols in tiles(S, cfg.attention_block_k):
            mask_ij = block(mask, rows, cols)
            s = block_scores(q_i, k[:, :, cols], mask_ij, block(bias, rows, cols), cfg)[0]  # (B, H, bq, bk)
            m_new = np.maximum(m, s.max(axis=-1))                    # (B, H, bq)
            rescale = np.exp(m - finite_or_zero(m_new))              # (B, H, bq) exp(m - m')
            p = np.exp(s - finite_or_zero(m_new)[..., None])         # (B, H, bq, bk)
            l = rescale * l + p.sum(axis=-1)                         # (B, H, bq)
            acc = rescale[..., None] * acc + p @ v[:, :, cols]       # (B, H, bq, Dh)
            m = m_new
            seen = seen | (True if mask_ij is None else np.any(mask_ij, axis=-1))
        total = np.where(l > 0, l, 1)
        context.append(np.where(seen[..., None], acc / total[..., None], 0))
        lse.append(finite_or_zero(m) + np.log(total))
    return np.concatenate(context, axis=2), np.concatenate(lse, axis=2)  # (B, H, T, Dh), (B, H, T)


def tiled_attention_backward(grad, q, k, v, context, lse, mask, cfg, bias=None):
    """FlashAttention's backward: each tile's probabilities recomputed from q, k and the saved lse.

        P = exp(s - lse)                (0 where masked: the reference's softmax gives exactly 0 there)
        dv_j += P^T do_i,   dP = do_i v_j^T
        dS = P * (dP - D),  D = rowsum(do * o)   (= rowsum(P * dP): o_i = sum_j P_ij v_j)
        soft-cap: dS *= 1 - (capped / cap)^2;   bias: dbias_ij = dS (summed where it broadcast)
        dq_i += dS k_j c,   dk_j += dS^T q_i c

    Nothing (T, S) is kept: D is (B, H, T), each tile is rebuilt and dropped. Returns (dq, dk, dv,
    dbias or None), dbias of the bias's own shape."""
    S = k.shape[2]
    D = (grad * context).sum(axis=-1)                                # (B, H, T)
    d_q, d_k, d_v = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    d_bias = None if bias is None else np.zeros(bias.shape, dtype=q.dtype)
    for rows in tiles(q.shape[2], cfg.attention_block_q):
        q_i, do_i = q[:, :, rows], grad[:, :, rows]                  # (B, H, bq, Dh)
        for cols in tiles(S, cfg.attention_block_k):
            mask_ij = block(mask, rows, cols)
            s, capped = block_scores(q_i, k[:, :, cols], mask_ij, block(bias, rows, cols), cfg)
            p = np.exp(s - lse[:, :, rows, None])                    # (B, H, bq, bk)
            if mask_ij is not None:
                p = np.where(mask_ij, p, 0)                          # (B, H, bq, bk)
            d_v[:, :, cols] += p.swapaxes(-1, -2) @ do_i             # (B, H, bk, Dh)
            d_s = p * (do_i @ v[:, :, cols].swapaxes(-1, -2) - D[:, :, rows, None])  # (B, H, bq, bk)
            if capped is not None:
                d_s = softcap_backward(d_s, capped, cfg.attn_logit_softcap)          # (B, H, bq, bk)
            if d_bias is not None:
                block(d_bias, rows, cols)[...] += autograd.sum_to_shape(d_s, block(bias, rows, cols).shape)
            d_q[:, :, rows] += d_s @ k[:, :, cols] * cfg.scale      # (B, H, bq, Dh)
            d_k[:, :, cols] += d_s.swapaxes(-1, -2) @ q_i * cfg.scale  # (B, H, bk, Dh)
    return d_q, d_k, d_v, d_bias


def tiled_flops(B, H, T, S, Dh, bk):
    """The rescales the reference does not do, on top of `attention_flops` (same scores, same
    context): per query row and block of keys, exp(m - m') (1 exp, 1 subtract), l's multiply-add
    and acc's Dh multiplies; then the division by l, Dh a row. With one block of keys it is the
    reference's work plus (Dh + 4) per row."""
    blocks = -(-S // bk)
    return B * H * T * (blocks * (Dh + 4) + Dh)
