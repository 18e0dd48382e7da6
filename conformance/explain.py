"""`tmirror explain COMPONENT`: one component on numbers small enough to read.

The reference's docstring gives the math; then every traced op of a tiny case (width 4,
2 heads, 3 positions) is printed from the float64 reference, with the float64 torch and
tf values' largest difference beside it: the walkthrough a whiteboard would give, checked.
"""
from __future__ import annotations

import inspect

import numpy as np

from conformance import registry, weights
from conformance.build import build

SMALL = dict(d_model=4, num_heads=2, d_ff=8, vocab_size=11, max_positions=8, num_layers=1,
             num_decoder_layers=1)


def walkthrough(name: str, frameworks=("torch", "tf"), variant: str = "default") -> str:
    entry = registry.get(name)
    if variant not in entry.variants:
        raise ValueError(f"variant must be one of {list(entry.variants)}; received variant={variant!r}")
    cfg = entry.config(variant).replace(**SMALL)
    w = weights.initialize(cfg, seed=0, std=0.5)
    inputs = entry.inputs(cfg, variant, batch=1, length=3)
    reference = build("numpy", cfg, w, dtype="float64")
    _, records = reference.trace(**inputs)
    twins = {fw: build(fw, cfg, w, dtype="float64").trace(**inputs)[1] for fw in frameworks}

    module = inspect.getmodule(entry.implementation("numpy"))
    lines = [f"{name} ({entry.cls}, variant {variant!r})", "=" * 60, inspect.getdoc(module) or "", "",
             f"config: " + ", ".join(f"{k}={getattr(cfg, k)}" for k in SMALL if k in ("d_model", "num_heads", "d_ff")),
             "", "inputs:"]
    for key, value in inputs.items():
        lines.append(f"  {key} {value.shape}:\n{_indent(value)}")
    lines += ["", "weights:"] + ([f"  {k} {v.shape}" for k, v in w.items()] or ["  (none)"])
    lines += ["", "ops, in execution order (float64 reference; |torch - ref|, |tf - ref|):"]
    for op, value in records.items():
        diffs = ", ".join(f"{fw} {np.abs(np.asarray(t[op], np.float64) - value).max():.1e}"
                          for fw, t in twins.items())
        lines.append(f"\n{op} {value.shape}   [{diffs}]\n{_indent(value)}")
    return "\n".join(lines)


def _indent(a) -> str:
    text = np.array2string(np.asarray(a), precision=4, suppress_small=True, max_line_width=100, threshold=200)
    return "\n".join("    " + line for line in text.splitlines())
