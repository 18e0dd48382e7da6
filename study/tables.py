"""Tables the docs compute when they are built (`{{ table NAME ARGS }}`): analytic only, so instant.

Parameter counts come from the NumPy reference's declared shapes (`registry.param_shapes`) and
`conformance.costs.params`; FLOPs from `conformance.costs.flops`, op by op. Nothing is typed by hand.
"""
from __future__ import annotations

import math

from conformance.spec import families, presets, registry
from conformance.core.config import Config
from conformance.costs import flops, params

B, T = 1, 128  # the shape every per-component count is quoted at
BASE = dict(d_model=768, num_heads=12, d_ff=3072, vocab_size=30522, max_positions=512, type_vocab_size=2)


def base_config(name: str) -> Config:
    """The registry entry `name` at BERT-base width (a model: its base-size preset)."""
    entry = registry.get(name)
    if entry.is_model:
        return presets.get(families.get(name).base_preset)
    return entry.config().replace(**BASE)


def component_ops(name: str, cfg: Config) -> list:
    """The forward ops of one registry entry at (B, T), as its reference declares them (`Module.flops`)."""
    return flops.ops(cfg, B, T)


def _md(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def component(name: str) -> str:
    """Parameters (name, shape, count) and forward FLOPs of one registry entry at BERT-base width."""
    cfg = base_config(name)
    shapes = registry.param_shapes(cfg)
    dims = f"D = {cfg.d_model}, H = {cfg.num_heads}, F = {cfg.d_ff}"
    out = []
    if registry.get(name).is_model:
        out.append(params_table(families.get(name).base_preset))
    elif shapes:
        rows = [(f"`{k}`", str(s), f"{math.prod(s):,}") for k, s in shapes.items()]
        rows.append(("**total**", "", f"**{sum(math.prod(s) for s in shapes.values()):,}**"))
        out.append(f"Parameters at BERT-base width ({dims}, V = {cfg.vocab_size}, P = {cfg.max_positions}):\n\n"
                   + _md(["canonical name", "shape", "parameters"], rows))
    else:
        out.append("No parameters.")
    ops = component_ops(name, cfg)
    if ops:
        total = sum(o.total for o in ops)
        quad = sum(o.total for o in ops if o.pairs)
        grouped = len(ops) > 16  # a layer or a whole model: by category
        if grouped:
            by = flops.totals(ops)["by_category"]
            rows = [(c, f"{v:,}", f"{v / total:.1%}") for c, v in by.items() if v]
        else:
            rows = [(f"`{o.name}`", o.category, f"{o.total:,}", f"{o.total / total:.1%}") for o in ops]
        header = ["category", "FLOPs", "share"] if grouped else ["op", "category", "FLOPs", "share"]
        where = f", {quad / total:.1%} of them in the T x T terms" if quad else ", all linear in T"
        out.append(f"Forward FLOPs at B = {B}, T = {T} ({dims}; one multiply-add = 2 FLOPs), "
                   f"{total:,} in all{where}:\n\n" + _md(header, rows))
    else:
        out.append("Forward FLOPs: none counted (a table lookup, a fixed table or the identity at inference).")
    return "\n\n".join(out)


def params_table(preset: str) -> str:
    """A preset's parameters by component, from the config alone (`costs.params.count`)."""
    cfg = presets.get(preset)
    a = params.count(cfg)
    rows = [(k, f"{v:,}", f"{v / a['total']:.1%}") for k, v in a["breakdown"].items() if v]
    rows.append(("**total**", f"**{a['total']:,}**", "100%"))
    layers = ", ".join(f"{n} x {k} layers of {a['per_layer'][k]['total']:,}" for k, n in a["layers"].items())
    return f"`{preset}` parameters ({layers}):\n\n" + _md(["component", "parameters", "share"], rows)


def models() -> str:
    """Every preset: size, parameters and forward GFLOPs at B = 1, T = 128."""
    rows = []
    for name in presets.names():
        cfg = presets.get(name)
        total = params.count(cfg)["total"]
        gf = flops.totals(flops.ops(cfg, B, T))["all"] / 1e9
        rows.append((f"`{name}`", cfg.kind, cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.d_ff, f"{total:,}",
                     f"{gf:,.2f}"))
    return _md(["preset", "kind", "L", "D", "H", "F", "parameters", f"GFLOPs (B={B}, T={T})"], rows)


def crossover(preset: str) -> str:
    """Where one layer's T^2 FLOPs overtake its T FLOPs (`costs.flops.crossover`)."""
    c = flops.crossover(presets.get(preset))
    return (f"For `{preset}` the matmul FLOPs of one layer are linear and quadratic in T in equal parts at "
            f"T* = 2D + F = {c['matmul_formula']:,} (all ops: {c['all']:,.0f}; with the causal half "
            f"skipped: {c['matmul_causal_halved']:,.0f}).")


TABLES = {"component": component, "params": params_table, "models": models, "crossover": crossover}


def table(name: str, *args: str) -> str:
    if name not in TABLES:
        raise ValueError(f"table must be one of {list(TABLES)}; received table={name!r}")
    return TABLES[name](*args)
