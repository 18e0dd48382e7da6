"""What the generated suite checks, as plain functions the tests, the planted-bug tests
and the CLI all call: one reference per case, one comparison, one failure message."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from conformance.spec import registry
from conformance import weights
from conformance.backends.build import build
from conformance.compare.tolerance import compare_outputs

CASES = [(entry.name, variant) for entry in registry.ENTRIES.values() for variant in entry.variants]


def case_id(case) -> str:
    name, variant = case
    return name if variant == "default" else f"{name}[{variant}]"


@lru_cache(maxsize=None)
def case_data(name: str, variant: str, seed: int = 0):
    """(entry, cfg, weights, inputs, float64 reference outputs) for one registry case."""
    entry = registry.get(name)
    cfg = entry.config(variant)
    w = weights.initialize(cfg, seed=seed, std=0.5 if not entry.is_model else 0.02)
    inputs = entry.inputs(cfg, variant, seed=seed)
    reference = build("numpy", cfg, w, dtype="float64")(**inputs)
    return entry, cfg, w, inputs, reference


def check_case(name, variant, framework, dtype, device="cpu", built=None) -> list:
    """Run one framework on one case and compare with the float64 reference.

    Returns the per-output comparisons; `failure_message` turns failures into text.
    `built` lets a caller pass a modified (planted-bug) build of the same case.
    """
    entry, cfg, w, inputs, reference = case_data(name, variant)
    m = built or build(framework, cfg, w, device=device, dtype=dtype)
    out = m(**inputs)
    label = f"{framework}/{dtype}/{device} {case_id((name, variant))}"
    results = compare_outputs(label, out, reference, dtype)
    from conformance.backends.precision import output_dtypes
    want = output_dtypes(dtype, entry.float64_output)  # mixed_*: the low dtype or float32
    for key, value in out.items():
        if str(value.dtype) not in want:
            from conformance.compare.tolerance import Comparison
            results.append(Comparison(f"{label}.{key}", np.inf, np.inf, (), False,
                                      f"computed in {value.dtype}, expected {' or '.join(want)}"))
    return results


def failure_message(results) -> str:
    bad = [r for r in results if not r.passed]
    return "\n".join(str(r) for r in bad)
