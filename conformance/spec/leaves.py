"""The one leaf-mapping mechanism: a canonical parameter leaf <-> another library's tensor.

Canonical weights keep kernels `[in, out]` under the leaves `kernel`, `bias`, `gamma`, `beta`
and `table`. Every other library stores the same numbers under its own names and layouts:
torch's `nn.Linear.weight` is `[out, in]`, GPT-2's `c_attn` fuses q, k and v into one tensor,
keras-hub keeps each attention projection per head `(D, H, Dh)`. A `Leaf` says which, and
`LAYOUTS` holds each layout as a pair of pure functions, canonical -> external and back.
The torch backend's table (`conformance.backends.torch.TORCH_LEAVES`), every family's
Hugging Face table and every keras-hub table are lists of `Leaf`s; model code never changes
for a layout.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Layout:
    external: Callable  # (canonical array, cfg) -> the other library's array
    canonical: Callable  # (the other library's array, cfg) -> canonical array


def _same(a, cfg):
    return a


def _transpose(a, cfg):
    return a.T


LAYOUTS: dict[str, Layout] = {
    "same": Layout(_same, _same),
    "transpose": Layout(_transpose, _transpose),  # torch nn.Linear: [out, in]
    "heads_in": Layout(lambda a, cfg: a.reshape(a.shape[0], -1, cfg.head_dim),        # (D, H Dh) -> (D, H, Dh)
                       lambda a, cfg: a.reshape(a.shape[0], -1)),
    "heads_bias": Layout(lambda a, cfg: a.reshape(-1, cfg.head_dim),                   # (H Dh,) -> (H, Dh)
                         lambda a, cfg: a.reshape(-1)),
    "heads_out": Layout(lambda a, cfg: a.reshape(-1, cfg.head_dim, a.shape[-1]),       # (H Dh, D) -> (H, Dh, D)
                        lambda a, cfg: a.reshape(-1, a.shape[-1])),
    # keras-hub's RoBERTa numbers positions 0..T-1 over a table without the rows no real token reads
    # (0..pad, its converter drops them): rolled, its row t is ours pad + 1 + t and nothing is lost
    "padding_offset": Layout(lambda a, cfg: np.roll(a, -(cfg.pad_token_id + 1), axis=0),
                             lambda a, cfg: np.roll(a, cfg.pad_token_id + 1, axis=0)),
    "row": Layout(lambda a, cfg: a[None], lambda a, cfg: a[0]),                          # (V,) <-> (1, V)
    "heads_first_in": Layout(lambda a, cfg: a.reshape(a.shape[0], -1, cfg.head_dim).transpose(1, 0, 2),  # (H, D, Dh)
                             lambda a, cfg: a.transpose(1, 0, 2).reshape(a.shape[1], -1)),  # keras-hub's Gemma
    # a convolution kernel: canonical (kh, kw, in, out), Keras's Conv2D layout, the [in, out] of a
    # patch flattened in (i, j, c) order; torch's Conv2d stores (out, in, kh, kw)
    "conv_out_in": Layout(lambda a, cfg: a.transpose(3, 2, 0, 1), lambda a, cfg: a.transpose(2, 3, 1, 0)),
    "batch_of_one": Layout(lambda a, cfg: a[None], lambda a, cfg: a[0]),  # (R, D) rows as a (1, R, D) tensor
}


@dataclass(frozen=True)
class Leaf:
    """One canonical parameter leaf <-> one tensor leaf of the matching module of another library.

    `canonical` is the leaf (`kernel`) or, for a tensor that fuses several, the sub-path
    (`query.kernel`); `part` is then this leaf's slice of `parts` equal slices along the last
    axis of the canonical-layout tensor (GPT-2's `c_attn` holds query, key, value)."""
    canonical: str
    external: str
    layout: str = "same"
    part: int | None = None
    parts: int = 3

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"Leaf.layout must be one of {list(LAYOUTS)}; received layout={self.layout!r}")

    def to_canonical(self, array, cfg=None) -> np.ndarray:
        a = LAYOUTS[self.layout].canonical(np.asarray(array), cfg)
        return a if self.part is None else np.split(a, self.parts, axis=-1)[self.part]

    def to_external(self, array, cfg=None) -> np.ndarray:
        return LAYOUTS[self.layout].external(np.asarray(array), cfg)


def fuse(leaves: list[Leaf], arrays: list, cfg=None) -> np.ndarray:
    """The external tensor of several fused leaves (`to_canonical`'s inverse over all parts)."""
    ordered = [a for _, a in sorted(zip(leaves, arrays), key=lambda la: la[0].part)]
    return leaves[0].to_external(np.concatenate(ordered, axis=-1), cfg)


def join(path: str, leaf: str, sep: str = ".") -> str:
    """A leaf's full name under its module path; "" is the model itself (BART's logits bias)."""
    return f"{path}{sep}{leaf}" if path else leaf


def table_rows(modules: dict, shapes: dict) -> list[tuple[str, str, Leaf]]:
    """(canonical name, external module path, leaf) for every canonical parameter in `shapes` that a
    table `{canonical module: (external module, leaves)}` maps; "{i}" in both stands for a layer index, "{e}"
    for an expert's (Mixtral)
    (and "{i+1}" in the external path for the same index counted from 1, as keras-hub's ViT numbers its
    blocks), a module "" for the model itself."""
    rows = []
    for module, (external, leaves) in modules.items():
        for leaf in leaves:
            pattern = re.compile(re.escape(join(module, leaf.canonical)).replace(re.escape("{i}"), r"(?P<i>\d+)")
                                 .replace(re.escape("{e}"), r"(?P<e>\d+)") + "$")
            for name in shapes:
                m = pattern.match(name)
                if m:
                    path = external
                    if m.groupdict().get("i") is not None:
                        path = path.replace("{i+1}", str(int(m.group("i")) + 1)).replace("{i}", m.group("i"))
                    if m.groupdict().get("e") is not None:
                        path = path.replace("{e}", m.group("e"))
                    rows.append((name, path, leaf))
    return rows


# The leaves of the common modules, as torch, Hugging Face and keras-hub name them.
TORCH_LINEAR = (Leaf("kernel", "weight", "transpose"), Leaf("bias", "bias"))
TORCH_NORM = (Leaf("gamma", "weight"), Leaf("beta", "bias"))
TORCH_EMBEDDING = (Leaf("table", "weight"),)
KERAS_DENSE = (Leaf("kernel", "kernel"), Leaf("bias", "bias"))
KERAS_HEADS_IN = (Leaf("kernel", "kernel", "heads_in"), Leaf("bias", "bias", "heads_bias"))  # MultiHeadAttention
KERAS_HEADS_OUT = (Leaf("kernel", "kernel", "heads_out"), Leaf("bias", "bias"))
KERAS_NORM = (Leaf("gamma", "gamma"), Leaf("beta", "beta"))
KERAS_TABLE = (Leaf("table", "embeddings"),)
TORCH_CONV = (Leaf("kernel", "weight", "conv_out_in"), Leaf("bias", "bias"))  # nn.Conv2d
KERAS_CONV = (Leaf("kernel", "kernel"), Leaf("bias", "bias"))  # keras.layers.Conv2D: already (kh, kw, in, out)
