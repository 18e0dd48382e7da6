"""The one declared place where canonical weight names and layouts meet each framework.

Canonical weights are a flat `dict[str, np.ndarray]` keyed by dotted module path plus a
leaf name: `kernel` `[in, out]` and `bias` (linear), `gamma` and `beta` (layer norm),
`table` (embedding). The Keras mirror names its variables exactly so, so its mapping is
the identity. The PyTorch mirror uses `nn.Linear`, `nn.LayerNorm` and `nn.Embedding`,
whose parameters are all called `weight` / `bias` and whose linear weight is
`[out, in]`: the rename and the transpose happen here and nowhere else.
"""
from __future__ import annotations

import numpy as np

# canonical leaf -> (torch leaf, transpose?)
TORCH_LEAVES = {
    "kernel": ("weight", True),
    "bias": ("bias", False),
    "gamma": ("weight", False),
    "beta": ("bias", False),
    "table": ("weight", False),
}


def split_leaf(name: str) -> tuple[str, str]:
    path, _, leaf = name.rpartition(".")
    return path, leaf


def torch_name(name: str) -> str:
    path, leaf = split_leaf(name)
    torch_leaf = TORCH_LEAVES[leaf][0]
    return f"{path}.{torch_leaf}" if path else torch_leaf


def to_torch(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    """Canonical (name, array) -> (torch state_dict key, array in torch layout)."""
    transpose = TORCH_LEAVES[split_leaf(name)[1]][1]
    return torch_name(name), (array.T if transpose else array)


def from_torch(name: str, array: np.ndarray) -> np.ndarray:
    """The inverse of `to_torch` for the canonical `name`: torch layout -> canonical."""
    transpose = TORCH_LEAVES[split_leaf(name)[1]][1]
    return array.T if transpose else array
