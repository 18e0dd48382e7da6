"""`tmirror matrix`: the summary matrix, reports/README.md.

Rows are the registry's components and models (every variant), columns framework x dtype
x device, each cell the worst output error against the float64 reference and pass/fail:
the generated suite's verdicts on one page. The frameworks "keras-torch" and "keras-jax" are
tf_impl on that Keras backend, every case in one subprocess (`conformance.compare.keras_backends`);
their float64 column is left out where Keras computes in float32 (`keras_backends.KNOWN`: on torch
everywhere, on jax in the cases that call ops.mean, cos, sin, tanh or dot_product_attention, which
`conformance/suites/test_keras_backends.py` holds to the float64 row where they call none).
"""
from __future__ import annotations

import time

from tabulate import tabulate

from conformance.compare import keras_backends
from conformance.compare.tolerance import TOLERANCES
from conformance.spec.registry import CASES, case_id
from conformance.suites.cases import case_data, check_case


KERAS = keras_backends.NAMES  # matrix framework -> Keras backend


def columns_of(frameworks, dtypes) -> list[tuple[str, str]]:
    """(framework, dtype) columns: not numpy float64 (the reference itself), nor a Keras backend's dtype
    that Keras computes in another (torch's float64)."""
    return [(f, d) for f in frameworks for d in dtypes if (f, d) != ("numpy", "float64")
            and (f not in KERAS or (KERAS[f], d) not in keras_backends.KNOWN)]


def measure(frameworks, dtypes, device="cpu", progress=None, cases=CASES) -> dict:
    """The cells of `cases` (default: every registry case) in each (framework, dtype) column."""
    for framework in [f for f in frameworks if f in KERAS]:
        why = keras_backends.unavailable(KERAS[framework])
        if why:
            raise ValueError(f"--frameworks {framework}: {why}")
    columns = columns_of(frameworks, dtypes)
    cells, errors, held = {}, {}, {}  # held: Keras computed float64 in float32 there (`BackendRun.held`)
    for case in cases:
        for framework, dtype in columns:
            if framework in KERAS:
                continue
            if progress:
                progress(f"{case_id(case)} {framework} {dtype}")
            results = check_case(*case, framework, dtype, device)
            cells[(case_id(case), framework, dtype)] = (max(r.max_abs for r in results),
                                                        all(r.passed for r in results))
    for framework in [f for f in frameworks if f in KERAS]:
        wanted = tuple(d for f, d in columns if f == framework)
        if not wanted:
            continue
        items = [(case_id(case), *case_data(*case)[1:]) for case in cases]
        runs = keras_backends.keras_backend_batch(items, (KERAS[framework],), wanted, timeout=3600)
        for (label, _, dtype), run in runs.items():
            if progress:
                progress(f"{label} {framework} {dtype}")
            if run.error:  # a failing cell, its reason under the table
                cells[(label, framework, dtype)] = (None, False)
                errors[(label, framework, dtype)] = run.error
                continue
            cells[(label, framework, dtype)] = (max(c.max_abs for c in run.held), run.held_passed)
            if run.within_float32:
                held[(label, framework, dtype)] = run.downcasts
    return {"columns": columns, "cells": cells, "device": device, "errors": errors, "held": held,
            "cases": [case_id(case) for case in cases]}


def cell(value) -> str:
    """One matrix cell: "worst max-abs error pass|FAIL"; "-" where the case did not run (value None),
    "ERROR" where it raised (no error value)."""
    if value is None:
        return "-"
    if value[0] is None:
        return "ERROR"
    return f"{value[0]:.1e} {'pass' if value[1] else 'FAIL'}"


def table(case_ids, columns, cells: dict, device) -> str:
    """The matrix as a Markdown table: a row per case id, a column per (framework, dtype) labelled
    "framework dtype device" (`device` a str, or {framework: device}); cells {(case id, framework,
    dtype): (worst max abs, passed)}, a missing cell shown as "-"."""
    where = device if isinstance(device, dict) else {f: device for f, _ in columns}
    header = ["component / model"] + [f"{f} {d} {where[f]}" for f, d in columns]
    rows = [[cid] + [cell(cells.get((cid, f, d))) for f, d in columns] for cid in case_ids]
    return tabulate(rows, header, tablefmt="github")


def markdown(m: dict, environment: dict) -> str:
    columns, cells, case_ids = m["columns"], m["cells"], m.get("cases", [case_id(c) for c in CASES])
    passed = sum(ok for _, ok in cells.values())
    worst = {f"{f} {d}": max(v for c in case_ids if (v := cells[(c, f, d)][0]) is not None) for f, d in columns}
    errors = [f"- `{label}` on {f} {d}: {why}" for (label, f, d), why in m.get("errors", {}).items()]
    held = [f"`{label}` on {f} {d} ({', '.join(ops)})" for (label, f, d), ops in m.get("held", {}).items()]
    left_out = sorted({(f, d) for f in {f for f, _ in columns} if f in KERAS
                       for d in ("float64",) if (KERAS[f], d) in keras_backends.KNOWN})
    return "\n".join([
        "# Conformance matrix", "",
        "Every registry component and model, every framework and dtype, against the float64 NumPy "
        "reference: worst max-abs output error and the verdict under the tolerance table. Generated by "
        "`tmirror matrix`; the per-model reports (`bert-base.md`, `gpt2.md`, `transformer-base.md`) "
        "show op-by-op detail.", "",
        f"**{passed} of {len(cells)} cells pass.** Worst error per column: "
        + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) + ".", "",
        table(case_ids, columns, cells, m["device"]), "",
        *[line for f, d in left_out for line in (f"Left out: {f} {d}: {keras_backends.KNOWN[(KERAS[f], d)]}.", "")],
        *(["Cells that raised:", "", *errors, ""] if errors else []),
        *([f"Held to the float32 row (a float64 table or output that Keras computes in float32 on that backend, "
           f"the ops named; `keras_backends.KNOWN`): {', '.join(held)}.", ""] if held else []),
        "Tolerances: |actual - reference| <= atol + rtol |reference| elementwise, or for the "
        "low-precision rows <= scale_rtol max |reference| per tensor (conformance/compare/tolerance.py):", "",
        tabulate([(k, t.atol, t.rtol, t.scale_rtol) for k, t in TOLERANCES.items()],
                 ["dtype", "atol", "rtol", "scale_rtol"], tablefmt="github"),
        "", "Environment: " + ", ".join(f"{k} {v}" for k, v in environment.items()
                                         if k in ("torch", "tensorflow", "keras", "numpy", "torch_threads",
                                                  "TF_ENABLE_ONEDNN_OPTS", "platform")),
        f"; generated {time.strftime('%Y-%m-%d')}.", ""])
