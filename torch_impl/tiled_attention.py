"""Mirrors `numpy_ref.tiled_attention`.

Differs: the backward is a `torch.autograd.Function` (`TiledAttention`) whose backward is the
blockwise recomputation of `numpy_ref.tiled_attention_backward`, so autograd keeps q, k, v, the
output and the rows' logsumexp (linear in S) instead of every tile's probabilities (the plain loop
under autograd would keep them all: quadratic again). With no gradient recorded (inference, export)
the loop runs as is, so `torch.export` and ONNX see plain tensor ops; the export unrolls the loops
at the traced T and S. The scale goes in as a Python float, as in the reference attention.
Only here: `TiledAttention`, `TiledAttention.forward`, `TiledAttention.backward` (the Function),
    `tiled_gradients` (its backward: `numpy_ref.tiled_attention_backward` line for line),
    `tiled_context` (the Function when autograd records, the loop when not).
"""
import torch

from torch_impl.activations import softcap


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
    s = q_i @ k_j.transpose(-1, -2) * cfg.scale                    # (B, H, bq, bk)
    if bias_ij is not None:
        s = s + bias_ij                                              # (B, H, bq, bk)
    capped = None
    if cfg.attn_logit_softcap is not None:
        s = capped = softcap(s, cfg.attn_logit_softcap)              # (B, H, bq, bk)
    if mask_ij is not None:
        s = torch.where(mask_ij, s, cfg.mask_fill)                   # (B, H, bq, bk)
    return s, capped


def finite_or_zero(m):
    """A running max that is still -inf (every key so far masked with fill -inf) reads as 0, as in `softmax`."""
    return torch.where(torch.isfinite(m), m, 0)


def tiled_attention(q, k, v, mask, cfg, bias=None):
    """q: (B, H, T, Dh)  k, v: (B, H, S, Dh)  mask, bias: broadcastable to (B, H, T, S) or None.
    Returns (context (B, H, T, Dh), lse (B, H, T)): the rows' logsumexp is the backward's statistic."""
    T, S = q.shape[2], k.shape[2]
    context, lse = [], []
    for rows in tiles(T, cfg.attention_block_q):
        q_i = q[:, :, rows]                                          # (B, H, bq, Dh)
        m = torch.full(q_i.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)  # (B, H, bq) running max
        l = torch.zeros(q_i.shape[:-1], dtype=q.dtype, device=q.device)               # (B, H, bq) running sum
        acc = torch.zeros_like(q_i)                                  # (B, H, bq, Dh) unnormalized output
        seen = torch.zeros(q_i.shape[:-1], dtype=torch.bool, device=q.device)  # (B, H, bq) has the row a key yet
        for cols in tiles(S, cfg.attention_block_k):
            mask_ij = block(mask, rows, cols)
            s = block_scores(q_i, k[:, :, cols], mask_ij, block(bias, rows, cols), cfg)[0]  # (B, H, bq, bk)
            m_new = torch.maximum(m, s.amax(dim=-1))                 # (B, H, bq)
            rescale = torch.exp(m - finite_or_zero(m_new))           # (B, H, bq) exp(m - m')
            p = torch.exp(s - finite_or_zero(m_new)[..., None])      # (B, H, bq, bk)
            l = rescale * l + p.sum(dim=-1)                          # (B, H, bq)
            acc = rescale[..., None] * acc + p @ v[:, :, cols]       # (B, H, bq, Dh)
            m = m_new
            seen = seen | (True if mask_ij is None else mask_ij.any(dim=-1))
        total = torch.where(l > 0, l, 1)
        context.append(torch.where(seen[..., None], acc / total[..., None], 0))
        lse.append(finite_or_zero(m) + torch.log(total))
    return torch.cat(context, dim=2), torch.cat(lse, dim=2)          # (B, H, T, Dh), (B, H, T)


def tiled_gradients(grad, q, k, v, context, lse, mask, cfg, bias=None):
    """`numpy_ref.tiled_attention_backward`, line for line: (dq, dk, dv, dbias or None)."""
    D = (grad * context).sum(dim=-1)                                 # (B, H, T)
    d_q, d_k, d_v = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    d_bias = None if bias is None else torch.zeros_like(bias)
    for rows in tiles(q.shape[2], cfg.attention_block_q):
        q_i, do_i = q[:, :, rows], grad[:, :, rows]                  # (B, H, bq, Dh)
        for cols in tiles(k.shape[2], cfg.attention_block_k):
            mask_ij = block(mask, rows, cols)
            s, capped = block_scores(q_i, k[:, :, cols], mask_ij, block(bias, rows, cols), cfg)
            p = torch.exp(s - lse[:, :, rows, None])                 # (B, H, bq, bk)
            if mask_ij is not None:
                p = torch.where(mask_ij, p, 0)                       # (B, H, bq, bk)
            d_v[:, :, cols] += p.transpose(-1, -2) @ do_i            # (B, H, bk, Dh)
            d_s = p * (do_i @ v[:, :, cols].transpose(-1, -2) - D[:, :, rows, None])  # (B, H, bq, bk)
            if capped is not None:
                d_s = d_s * (1.0 - (capped / cfg.attn_logit_softcap) ** 2)            # (B, H, bq, bk)
            if d_bias is not None:
                tile = block(d_bias, rows, cols)
                tile += d_s.sum(dim=[i for i in range(4) if tile.shape[i] == 1 and d_s.shape[i] != 1], keepdim=True)
            d_q[:, :, rows] += d_s @ k[:, :, cols] * cfg.scale      # (B, H, bq, Dh)
            d_k[:, :, cols] += d_s.transpose(-1, -2) @ q_i * cfg.scale  # (B, H, bk, Dh)
    return d_q, d_k, d_v, d_bias


class TiledAttention(torch.autograd.Function):
    """The tiled loop whose backward recomputes each tile: autograd keeps O(S) tensors, not O(T S)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, bias, cfg):
        context, lse = tiled_attention(q, k, v, mask, cfg, bias)
        ctx.cfg = cfg
        ctx.save_for_backward(q, k, v, context, lse, mask, bias)
        return context

    @staticmethod
    def backward(ctx, grad):
        q, k, v, context, lse, mask, bias = ctx.saved_tensors
        d_q, d_k, d_v, d_bias = tiled_gradients(grad, q, k, v, context, lse, mask, ctx.cfg, bias)
        return d_q, d_k, d_v, None, d_bias, None


def tiled_context(q, k, v, mask, cfg, bias=None):
    """The tiled loop's context, through `TiledAttention` when autograd records (so its backward is the blockwise one)."""
    records = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, bias))
    if records:
        return TiledAttention.apply(q, k, v, mask, bias, cfg)       # (B, H, T, Dh)
    return tiled_attention(q, k, v, mask, cfg, bias)[0]              # (B, H, T, Dh)
