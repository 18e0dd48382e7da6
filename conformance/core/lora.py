"""LoRA's settings and its framework-free arithmetic: which projections get adapters, their shapes,
their initial values, their count, and the merge.

LoRA (Hu et al. 2021) freezes a projection y = x W + b (W: [in, out], math layout) and learns a
low-rank change to it, through two small matrices:

    y = x W + b + s * dropout(x) A B        A: [in, r]   B: [r, out]   s = alpha / r

In canonical names a target `encoder.0.attention.query` keeps its `kernel` and `bias` and gains
`encoder.0.attention.query.lora_a.kernel` (in, r) and `.lora_b.kernel` (r, out): two bias-free
Linears, so each framework stores them as it stores any Linear (torch's [out, in]: A's torch
weight is peft's `lora_A.weight`, (r, in), and B's peft's `lora_B.weight`, (out, r)). As peft does,
A starts Kaiming-uniform (bound 1 / sqrt(in)) and B at zero, so the adapted model starts equal to
the base model; s = alpha / r keeps the update's size steady when r changes.

Trainable parameters: r (in + out) a target instead of in x out (`count`). Merging folds the
adapter into the kernel, W' = W + s A B, after which the model is the plain one again (`merge`).

Target names select projections the way peft's `target_modules` do: a Linear at dotted path p is a
target if p equals a name or ends with "." + name ("query" selects every layer's query projection).
A name that selects nothing is refused, listing the names that would (`targets`).

This module imports no framework: numpy_ref.lora, torch_impl.lora and tf_impl.lora read it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

ADAPTERS = ("lora_a", "lora_b")  # the two Linears a target gains, under its path


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 8                     # r: the inner width of the update A B
    alpha: float = 16.0               # the update is scaled by alpha / r (peft's lora_alpha)
    dropout: float = 0.0              # on the adapter's input only (peft's lora_dropout)
    targets: tuple = ("query", "value")  # module names, matched as peft's target_modules

    def __post_init__(self):
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise ValueError(f"LoraConfig.rank must be a positive int; received rank={self.rank!r}")
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise ValueError(f"LoraConfig.alpha must be a number > 0; received alpha={self.alpha!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"LoraConfig.dropout must be in [0, 1); received dropout={self.dropout!r}")
        if isinstance(self.targets, str) or not self.targets or not all(
                isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"LoraConfig.targets must be a non-empty tuple of module names (e.g. ('query', "
                             f"'value')); received targets={self.targets!r}")
        object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def scaling(self) -> float:
        """s = alpha / r."""
        return self.alpha / self.rank

    def replace(self, **changes) -> "LoraConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _selects(path: str, name: str) -> bool:
    return path == name or path.endswith("." + name)


def targets(linear_paths, lcfg: LoraConfig) -> list[str]:
    """The paths among `linear_paths` (every Linear of a model, in module order) that `lcfg.targets`
    select. A target name that selects none is a ValueError listing the module names that exist."""
    linear_paths = list(linear_paths)
    unmatched = [name for name in lcfg.targets if not any(_selects(p, name) for p in linear_paths)]
    if unmatched:
        names = sorted({p.rpartition(".")[2] for p in linear_paths})
        raise ValueError(f"LoraConfig.targets must name Linear modules of the model, one of {names} (or a "
                         f"dotted path ending in one); received {unmatched}, which match no module")
    return [p for p in linear_paths if any(_selects(p, name) for name in lcfg.targets)]


def adapter_shapes(linear_shapes: dict, lcfg: LoraConfig) -> dict[str, tuple]:
    """{canonical adapter name: shape} for {target path: (in, out)}: A (in, r) and B (r, out)."""
    r = lcfg.rank
    out = {}
    for path, (d_in, d_out) in linear_shapes.items():
        out[f"{path}.lora_a.kernel"] = (d_in, r)
        out[f"{path}.lora_b.kernel"] = (r, d_out)
    return out


def linear_shapes(param_shapes: dict, lcfg: LoraConfig) -> dict[str, tuple]:
    """{target path: (in, out)} from a model's canonical {name: shape}: every `path.kernel` of rank 2
    is a Linear (an embedding table is `.table`, a norm `.gamma`)."""
    kernels = {name[:-len(".kernel")]: shape for name, shape in param_shapes.items()
               if name.endswith(".kernel") and len(shape) == 2}
    return {path: kernels[path] for path in targets(kernels, lcfg)}


def is_adapter(name: str) -> bool:
    """Whether a canonical weight name is a LoRA adapter's."""
    return any(f".{a}." in f".{name}" for a in ADAPTERS)


def adapters(shapes: dict) -> dict:
    """The adapter entries of a {canonical name: anything} dict."""
    return {k: v for k, v in shapes.items() if is_adapter(k)}


def count(linear_shapes: dict, lcfg: LoraConfig) -> dict:
    """Trainable parameters with adapters on `linear_shapes` ({path: (in, out)}), against training
    the same projections in full: r (in + out) a target against in x out."""
    r = lcfg.rank
    per_target = {p: {"in": i, "out": o, "lora": r * (i + o), "full": i * o} for p, (i, o) in linear_shapes.items()}
    return {"per_target": per_target, "lora": sum(t["lora"] for t in per_target.values()),
            "full": sum(t["full"] for t in per_target.values())}


def initialize(shapes: dict, seed: int = 0, zero_b: bool = True) -> dict[str, np.ndarray]:
    """Adapter weights for {canonical adapter name: shape}: A uniform in +-1/sqrt(in) (peft's
    kaiming_uniform_(a=sqrt(5)), float64), B zeros (peft's) or, with zero_b=False, uniform like A,
    so a test sees the adapter's effect."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        if ".lora_b." in name and zero_b:
            out[name] = np.zeros(shape)
        else:
            bound = 1.0 / math.sqrt(shape[0])
            out[name] = rng.uniform(-bound, bound, shape)
    return out


def split(weights: dict) -> tuple[dict, dict]:
    """(base weights, adapter weights) of a canonical dict."""
    return {k: v for k, v in weights.items() if not is_adapter(k)}, adapters(weights)


def merge(weights: dict, lcfg: LoraConfig) -> dict[str, np.ndarray]:
    """The base model's weights with every adapter folded in: kernel + s A B, adapters dropped."""
    base, adapters = split(weights)
    merged = dict(base)
    for name in adapters:
        if name.endswith(".lora_a.kernel"):
            path = name[:-len(".lora_a.kernel")]
            a, b = adapters[name], adapters[f"{path}.lora_b.kernel"]
            merged[f"{path}.kernel"] = base[f"{path}.kernel"] + lcfg.scaling * (a @ b)  # (in, out)
    return merged
