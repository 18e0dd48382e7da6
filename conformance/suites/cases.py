"""What the generated suite checks, as plain functions the tests, the planted-bug tests
and the CLI all call: one reference per case, one comparison, one failure message."""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np

from conformance import weights
from conformance.backends import Gradients, build, supports
from conformance.backends.dtypes import output_dtypes
from conformance.compare import routing
from conformance.compare.gradients import absent_activations, gradient_rows
from conformance.compare.tolerance import Comparison, compare_outputs, gradient_tolerance
from conformance.spec import registry
from conformance.spec.registry import CASES, PACKAGES, case_id


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
    label = f"{framework}/{dtype}/{device} {case_id((name, variant))}"
    if cfg.feed_forward == "moe" and m.framework in PACKAGES and m.compile is None:  # the taps say the routing
        out, results, _ = routed_comparison(label, name, variant, m, dtype)
    else:
        out = m(**inputs)
        results = compare_outputs(label, out, reference, dtype)
    want = output_dtypes(dtype, entry.float64_output)  # mixed_*: the low dtype or float32
    for key, value in out.items():
        if str(value.dtype) not in want:
            results.append(Comparison(f"{label}.{key}", np.inf, np.inf, (), False,
                                      f"computed in {value.dtype}, expected {' or '.join(want)}"))
    return results


@lru_cache(maxsize=None)
def reference_trace(name: str, variant: str) -> dict:
    """The float64 reference's trace of one registry case."""
    _, cfg, w, inputs, _ = case_data(name, variant)
    return build("numpy", cfg, w, dtype="float64").trace(**inputs)[1]


def routed_comparison(label, name, variant, m, dtype) -> tuple[dict, list, routing.Agreement]:
    """(outputs, comparisons, routing agreement) of a mixture-of-experts case (`conformance.compare.routing`):
    outputs compared at the tokens no near-tie reaches, and a failed comparison for each token whose experts
    differ without one."""
    entry, cfg, _, inputs, reference = case_data(name, variant)
    out, trace = m.trace(**inputs)
    agreement = routing.agreement(reference_trace(name, variant), trace, cfg.experts_per_token, dtype,
                                  routing.token_shape(inputs), entry.is_model)
    wrong = [Comparison(f"{label}.{op}", np.inf, np.inf, (), False, "another expert chosen, and no near-tie")
             for op in agreement.unambiguous_disagreements()]
    return out, routing.compare_unambiguous(label, out, reference, dtype, agreement) + wrong, agreement


def failure_message(results) -> str:
    bad = [r for r in results if not r.passed]
    return "\n".join(str(r) for r in bad)


# ------------------------------------------------------------------------------------ gradients

@lru_cache(maxsize=None)
def reference_gradients(name: str, variant: str, seed: int = 0) -> Gradients:
    """The float64 NumPy backward of one registry case (`suite.case_data`'s weights and inputs)."""
    _, cfg, w, inputs, _ = case_data(name, variant, seed)
    return build("numpy", cfg, w, dtype="float64").gradients(seed=seed, **inputs)


def check_gradients(name: str, variant: str, framework: str, dtype: str, built=None,
                    reference: Gradients | None = None) -> list[Comparison]:
    """Every input, weight and activation gradient of one framework on one case against the
    reference backward; failures are named `<framework>/<dtype> <case> <group> <tensor path>`.
    `built` and `reference` let a caller pass a planted-bug build or a planted-bug reference."""
    gradient_tolerance(dtype)  # a dtype with no gradient row is refused before any work
    _, cfg, w, inputs, _ = case_data(name, variant)
    entry = registry.get(name)
    reference = reference or reference_gradients(name, variant)
    m = built or build(framework, cfg, w, dtype=dtype)
    actual = m.gradients(cotangents=reference.cotangents, **inputs)
    label = f"{framework}/{dtype} {case_id((name, variant))}"
    has = any(reference.groups().values()) or any(actual.groups().values())
    if has != entry.differentiable:
        return [Comparison(f"{label} gradients", np.inf, np.inf, (), False,
                           "has gradients although the registry declares differentiable=False" if has else
                           "no gradient at all although the registry declares the entry differentiable")]
    if not has:  # declared and found constant: that agreement is the check
        return [Comparison(f"{label} gradients", 0.0, 0.0, (), True, "nothing to differentiate, as declared")]
    absent = absent_activations(cfg, reference.activations)
    return [replace(r.result, name=f"{label} {r.group} {r.op}")
            for r in gradient_rows(reference, actual, dtype, absent)]


def measure_gradients(cases=None, frameworks=("numpy", "torch", "tf"), dtypes=("float64", "float32")) -> list[dict]:
    """The evidence for the gradient rows: per registry case, framework and dtype, the worst
    scale error (max |a - r| / max |r|, a bias on its layer's scale) over every gradient, and where."""
    rows = []
    for case in cases or CASES:
        for framework in frameworks:
            for dtype in dtypes:
                if (framework, dtype) == ("numpy", "float64") or supports(framework, case, dtype, "cpu"):
                    continue
                results = check_gradients(*case, framework, dtype)
                worst = max(results, key=lambda r: r.max_rel)
                rows.append({"case": case_id(case), "framework": framework, "dtype": dtype,
                             "worst": worst.max_rel, "where": worst.name, "passed": all(r.passed for r in results)})
    return rows
