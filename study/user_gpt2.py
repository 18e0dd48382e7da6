"""A GPT-2 written by hand in PyTorch, the way someone porting a model writes one: its own module names
(`blocks.0.attn.q`, not the canonical `layers.0.attention.query`), torch's `nn.Linear` ([out, in]
weights) and its own forward. docs/harness/compare.md points the harness at it:

    tmirror compare gpt2-tiny --a module:study/user_gpt2.py:make_model

`MODULES` is the name map a user writes: canonical module -> (this model's module path, leaves), the
form of the families' tables; the harness derives the rest (the attention and block containers,
the activation by data flow). `make_model(cfg, weights, bug=...)` plants one of three bugs, each
of which the comparison pins to its op (tests/test_compare.py): "transposed_kernel" (the query
projection multiplies by its [out, in] weight as if it were [in, out]), "wrong_epsilon" (the second
layer norm keeps Keras's default epsilon, 1e-3), "missing_scale" (no 1/sqrt(Dh) on the scores).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from conformance.spec.leaves import TORCH_EMBEDDING, TORCH_LINEAR, TORCH_NORM, table_rows

BUGS = ("transposed_kernel", "wrong_epsilon", "missing_scale")

MODULES = {
    "embeddings.token": ("wte", TORCH_EMBEDDING),
    "embeddings.position": ("wpe", TORCH_EMBEDDING),
    "layers.{i}.attention_norm": ("blocks.{i}.ln1", TORCH_NORM),
    "layers.{i}.attention.query": ("blocks.{i}.attn.q", TORCH_LINEAR),
    "layers.{i}.attention.key": ("blocks.{i}.attn.k", TORCH_LINEAR),
    "layers.{i}.attention.value": ("blocks.{i}.attn.v", TORCH_LINEAR),
    "layers.{i}.attention.output": ("blocks.{i}.attn.proj", TORCH_LINEAR),
    "layers.{i}.feed_forward_norm": ("blocks.{i}.ln2", TORCH_NORM),
    "layers.{i}.feed_forward.inner": ("blocks.{i}.mlp.fc", TORCH_LINEAR),
    "layers.{i}.feed_forward.outer": ("blocks.{i}.mlp.out", TORCH_LINEAR),
    "final_norm": ("ln_f", TORCH_NORM),
}


class Projection(nn.Linear):
    """nn.Linear, with the planted bug: the [out, in] weight used as if it were [in, out]."""
    transposed = False

    def forward(self, x):
        return x @ self.weight + self.bias if self.transposed else super().forward(x)


class Attention(nn.Module):
    def __init__(self, d, heads, bug):
        super().__init__()
        self.heads, self.bug = heads, bug
        self.q, self.k, self.v, self.proj = (Projection(d, d) for _ in range(4))
        self.q.transposed = bug == "transposed_kernel"

    def forward(self, x, mask):                                       # x: (B, T, D), mask: (B, 1, T, T) bool
        B, T, D = x.shape
        q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in (self.q(x), self.k(x), self.v(x)))  # (B, H, T, Dh)
        scores = q @ k.transpose(-1, -2)                               # (B, H, T, T)
        if self.bug != "missing_scale":
            scores = scores / math.sqrt(q.shape[-1])
        probs = torch.softmax(scores.masked_fill(~mask, -1e9), dim=-1)
        return self.proj((probs @ v).transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, d, d_ff):
        super().__init__()
        self.fc, self.act, self.out = nn.Linear(d, d_ff), nn.GELU(approximate="tanh"), nn.Linear(d_ff, d)

    def forward(self, x):
        return self.out(self.act(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg, bug):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg.d_model, cfg.num_heads, bug)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=1e-3 if bug == "wrong_epsilon" else cfg.layer_norm_eps)
        self.mlp = MLP(cfg.d_model, cfg.d_ff)

    def forward(self, x, mask):
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class MyGPT2(nn.Module):
    def __init__(self, cfg, bug=None):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.max_positions, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, bug) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, input_ids, attention_mask=None):
        B, T = input_ids.shape
        keys = torch.ones(B, T, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))[None, None] & keys[:, None, None, :]
        x = self.wte(input_ids) + self.wpe(torch.arange(T))
        for block in self.blocks:
            x = block(x, mask)
        h = self.ln_f(x)
        return {"last_hidden_state": h, "logits": h @ self.wte.weight.T}  # the head is tied to the table


def load(model: nn.Module, modules: dict, cfg, weights: dict) -> nn.Module:
    """The canonical weights into the model through the name map, as the user's own converter would."""
    state = {f"{path}.{leaf.external}": torch.from_numpy(np.ascontiguousarray(leaf.to_external(weights[name], cfg)))
             for name, path, leaf in table_rows(modules, {k: np.shape(v) for k, v in weights.items()})}
    model.load_state_dict(state, strict=True)
    return model.eval()


def make_model(cfg, weights, bug: str | None = None) -> nn.Module:
    if bug is not None and bug not in BUGS:
        raise ValueError(f"bug must be one of {list(BUGS)} or None; received bug={bug!r}")
    return load(MyGPT2(cfg, bug), MODULES, cfg, weights)


def make_transposed_kernel(cfg, weights):
    return make_model(cfg, weights, "transposed_kernel")


def make_wrong_epsilon(cfg, weights):
    return make_model(cfg, weights, "wrong_epsilon")


def make_missing_scale(cfg, weights):
    return make_model(cfg, weights, "missing_scale")
