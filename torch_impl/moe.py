"""Mirrors `numpy_ref.moe`. Differs: the experts are an `nn.ModuleList`; a token's experts come from
`torch.topk` (as `transformers`' MixtralTopKRouter), the routed tokens from `torch.nonzero`, and their
outputs are summed back with `index_add` (as MixtralExperts), cast to the block's input dtype first (under
autocast the experts' matmuls come out in the low dtype). Not here: the backwards (autograd's)."""
import torch
from torch import nn

from conformance.core import checks, trace
from torch_impl.activations import softmax
from torch_impl.feed_forward import GatedFeedForward
from torch_impl.linear import Linear


def top_k(probs, k):
    return torch.topk(probs, k, dim=-1).indices                                  # (N, k)


def routing_weights(probs, index):
    top = torch.gather(probs, -1, index)                                          # (N, k)
    return torch.zeros_like(probs).scatter(-1, index, top / top.sum(dim=-1, keepdim=True))  # (N, E)


def expert_fractions(indices, num_experts, mask=None):
    mask = torch.ones(indices[0].shape[0]) if mask is None else mask.to(torch.float64)
    counts = sum((nn.functional.one_hot(i, num_experts).to(torch.float64) * mask[:, None, None]).sum(dim=(0, 1))
                 for i in indices)
    return counts / (len(indices) * mask.sum())                                   # (E,)


def load_balancing_loss(probs, indices, mask=None):
    E = probs[0].shape[-1]
    m = torch.ones(probs[0].shape[0], dtype=probs[0].dtype) if mask is None else mask.to(probs[0].dtype)
    f = expert_fractions(indices, E, m).to(probs[0].dtype)
    P = sum((p * m[:, None]).sum(dim=0) for p in probs) / (len(probs) * m.sum())  # (E,)
    return E * (f * P).sum()


class SparseMoeBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.k = cfg.experts_per_token
        self.router = Linear(cfg.d_model, cfg.num_experts, use_bias=False)
        self.experts = nn.ModuleList(GatedFeedForward(cfg) for _ in range(cfg.num_experts))
        self.router_probs = self.router_index = None

    def forward(self, x):
        checks.last_axis("x", checks.shape_of(x), self.router.d_in, "d_model")
        tap = trace.tap_for(self)
        h = x.reshape(-1, x.shape[-1])                                            # (N, D)
        probs = tap("probs", softmax(self.router(h)))                             # (N, E)
        index = top_k(probs, self.k)                                              # (N, k)
        routing = tap("routing", routing_weights(probs, index))                   # (N, E)
        y = torch.zeros_like(h)                                                   # (N, D)
        for e, expert in enumerate(self.experts):  # every expert runs, on the tokens that chose it (maybe none)
            token = torch.nonzero((index == e).any(dim=-1)).squeeze(-1)           # (n_e,)
            y = y.index_add(0, token, (routing[token, e, None] * expert(h[token])).to(y.dtype))  # (n_e, D)
        self.router_probs, self.router_index = probs, index
        return tap("output", y.reshape(x.shape))                                  # (..., D)
