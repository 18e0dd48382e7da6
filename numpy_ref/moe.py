"""Mixture of experts: Mixtral's sparse feed-forward (Jiang et al. 2024, after Shazeer et al.
2017 and Switch, Fedus et al. 2021). E SwiGLU experts; each token runs through only k of them.

    logits = x W_router                  (N, E)  a linear router, no bias
    p = softmax(logits)                  (N, E)
    top = the k largest p of each token  (N, k)  exact ties: the lower expert index first
    r = p[top] / sum p[top]              (N, k)  the softmax over the selected experts alone
    y_n = sum_j r_nj FFN_top_nj(x_n)     (N, D)  each expert a GatedFeedForward (SwiGLU)

Renormalizing the top-k probabilities is the softmax of the k selected logits (the shared
denominator cancels): `transformers`' MixtralSparseMoeBlock computes it this way, in this
order. `routing` (N, E) holds r at the selected experts and 0 elsewhere: the dense view.

Why it pays: the parameters are E experts' (3 D F each), but a token costs k experts'
FLOPs, 6 k D F, plus the router's 2 D E. Mixtral 8x7B holds 46.7B parameters and runs
12.9B a token.

Gradients flow through the selected experts and through their weights r; the choice `top`
is piecewise constant in the logits (a small change never changes it, a large one jumps),
so it has no gradient, and an expert no token chose gets a zero one. With r_e = p_e / S
(S = sum of the selected p), dp_e = (dr_e - sum_j r_j dr_j) / S at the selected experts,
0 at the others, then softmax's backward to the logits. With k = 1, r = p / p = 1: the
router learns nothing from the task loss (Switch weights by p itself for this reason).

The load-balancing loss (Switch Transformer eqs. 4-6; `transformers`'
`load_balancing_loss_func`), over the L MoE layers and the N (unpadded) tokens:

    f_e = (1 / (L N)) sum_l sum_n [e in top_ln]   share of routing slots (sums to k)
    P_e = (1 / (L N)) sum_l sum_n p_lne           mean router probability of e
    aux = E sum_e f_e P_e                         k when both are uniform

f is piecewise constant, so the gradient reaches the router through P alone:
d aux / d p_lne = E f_e / (L N). The training loss adds `router_aux_loss_coef` aux.

Costs: the router 2 N D E; softmax 5 N E; each routed token one expert, k N in all, 6 D F
each (plus the activation and the product); the combine, one multiply-add per element.
"""
import numpy as np

from conformance.core import checks, trace
from conformance.core.costs import PER_ELEMENT, Op, Saved, scoped
from numpy_ref import autograd
from numpy_ref._module import Module
from numpy_ref.activations import softmax, softmax_backward
from numpy_ref.feed_forward import GatedFeedForward
from numpy_ref.linear import Linear


def top_k(probs, k):
    """(N, k) the indices of each row's k largest probabilities, largest first; of equal ones the lower
    index, as tf.math.top_k. torch.topk promises no order among equals (and on CPU takes another): where
    two frameworks' probabilities tie, they may route differently (`conformance.compare.routing`)."""
    return np.argsort(-probs, axis=-1, kind="stable")[:, :k]                     # (N, k)


def routing_weights(probs, index):
    """(N, E): the selected probabilities renormalized to sum to 1, zero at the experts not chosen."""
    top = np.take_along_axis(probs, index, axis=-1)                               # (N, k)
    routing = np.zeros_like(probs)
    np.put_along_axis(routing, index, top / top.sum(axis=-1, keepdims=True), axis=-1)
    return routing                                                                # (N, E)


def routing_backward(d_routing, routing, probs, index):
    """dL/dp from dL/dr, at the selected experts: (dr_e - sum_j r_j dr_j) / S, S = sum of selected p."""
    d_top = np.take_along_axis(d_routing, index, axis=-1)                         # (N, k)
    top_r = np.take_along_axis(routing, index, axis=-1)                           # (N, k)
    total = np.take_along_axis(probs, index, axis=-1).sum(axis=-1, keepdims=True)  # (N, 1)
    d_probs = np.zeros_like(probs)
    np.put_along_axis(d_probs, index, (d_top - (top_r * d_top).sum(axis=-1, keepdims=True)) / total, axis=-1)
    return d_probs                                                                # (N, E)


def expert_fractions(indices, num_experts, mask=None):
    """f: (E,) the share of routing slots each expert got, over every layer's (N, k) `indices` and the
    tokens `mask` (N,) keeps (1 = a real token)."""
    mask = np.ones(indices[0].shape[0]) if mask is None else np.asarray(mask, np.float64)
    counts = sum(np.bincount(i.reshape(-1), weights=np.repeat(mask, i.shape[1]), minlength=num_experts)
                 for i in indices)
    return counts / (len(indices) * mask.sum())                                   # (E,)


def load_balancing_loss(probs, indices, mask=None):
    """aux = E sum_e f_e P_e over layers: `probs` a list of (N, E), `indices` of (N, k), mask (N,)."""
    E = probs[0].shape[-1]
    m = np.ones(probs[0].shape[0], probs[0].dtype) if mask is None else np.asarray(mask, probs[0].dtype)
    f = expert_fractions(indices, E, m).astype(probs[0].dtype)
    P = sum((p * m[:, None]).sum(axis=0) for p in probs) / (len(probs) * m.sum())  # (E,)
    return E * (f * P).sum()


def load_balancing_backward(grad, probs, indices, mask=None):
    """[(N, E)] d aux / d p of each layer, times the scalar `grad`: E f_e m_n / (L sum m)."""
    E, L = probs[0].shape[-1], len(probs)
    m = np.ones(probs[0].shape[0], probs[0].dtype) if mask is None else np.asarray(mask, probs[0].dtype)
    f = expert_fractions(indices, E, m).astype(probs[0].dtype)
    d = grad * E * f[None, :] * m[:, None] / (L * m.sum())                        # (N, E)
    return [d for _ in probs]


class SparseMoeBlock(Module):
    """After a forward, `router_probs` (N, E) and `router_index` (N, k) hold its routing (the model's
    load-balancing loss reads them); `probs_grad`, when a model sets it before backward, is added to
    dL/dp: the loss's path into the router."""

    def __init__(self, cfg):
        super().__init__()
        self.k = cfg.experts_per_token
        self.router = Linear(cfg.d_model, cfg.num_experts, use_bias=False)
        self.experts = [GatedFeedForward(cfg) for _ in range(cfg.num_experts)]
        self.router_probs = self.router_index = self.probs_grad = None

    def forward(self, x):
        checks.last_axis("x", checks.shape_of(x), self.router.d_in, "d_model")
        tap = trace.tap_for(self)
        h = x.reshape(-1, x.shape[-1])                                            # (N, D)
        probs = tap("probs", softmax(self.router(h)))                             # (N, E)
        index = top_k(probs, self.k)                                              # (N, k)
        routing = tap("routing", routing_weights(probs, index))                   # (N, E)
        y = np.zeros_like(h)                                                      # (N, D)
        for e, expert in enumerate(self.experts):  # every expert runs, on the tokens that chose it (maybe none)
            token = np.nonzero((index == e).any(axis=-1))[0]                      # (n_e,)
            y[token] += routing[token, e, None] * expert(h[token])                # (n_e, D)
        self.router_probs, self.router_index = probs, index
        return tap("output", y.reshape(x.shape))                                  # (..., D)

    def flops(self, x, **_):
        N, D, E = int(np.prod(x[:-1])), x[-1], len(self.experts)
        yield from scoped("router", self.router.flops((N, D)))
        yield Op("probs", "softmax", N * E * PER_ELEMENT["softmax"])
        yield from scoped("experts", self.experts[0].flops((self.k * N, D)))     # k N routed tokens in all
        yield Op("combine", "elementwise", 2 * self.k * N * D)                   # r * FFN(x), then the sum

    def saved(self, f, x, **_):
        N, D, E = int(np.prod(x[:-1])), x[-1], len(self.experts)
        yield from scoped("router", self.router.saved(f, (N, D)))
        yield Saved("", "probs and routing", 2 * N * E * f)
        yield from scoped("experts", self.experts[0].saved(f, (self.k * N, D)))
        yield Saved("", "expert outputs, for d routing", self.k * N * D * f)

    def peak(self, f, live, x, **_):
        """Inference: input, output and the (N, E) routing, and one expert at a time, at worst on all N."""
        N, D, E = int(np.prod(x[:-1])), x[-1], len(self.experts)
        return 2 * N * D * f + 2 * N * E * f + self.experts[0].peak(f, live, (1, N, D))

    def backward(self, grad):
        """y_n = sum_e r_ne FFN_e(x_n): dx_n gets r_ne FFN_e'(x_n)^T dy_n from each selected expert,
        dr_ne = <dy_n, FFN_e(x_n)>; then dr -> dp -> dlogits -> the router's dx."""
        saved = autograd.saved(self)
        grad = saved.tap("output", grad)                                          # (..., D)
        g = grad.reshape(-1, grad.shape[-1])                                      # (N, D)
        routing, probs = saved.taps["routing"], saved.taps["probs"]               # (N, E)
        index = top_k(probs, self.k)
        d_h, d_routing = np.zeros_like(g), np.zeros_like(routing)
        for e in reversed(range(len(self.experts))):
            expert = self.experts[e]
            token = np.nonzero((index == e).any(axis=-1))[0]                      # (n_e,)
            d_routing[token, e] = (g[token] * autograd.last_output(expert)).sum(axis=-1)
            d_h[token] += expert.backward(routing[token, e, None] * g[token])     # (n_e, D)
        d_probs = routing_backward(saved.tap("routing", d_routing), routing, probs, index)
        if self.probs_grad is not None:
            d_probs, self.probs_grad = d_probs + self.probs_grad, None
        d_h = d_h + self.router.backward(softmax_backward(saved.tap("probs", d_probs), probs))
        return d_h.reshape(grad.shape)                                            # (..., D)
