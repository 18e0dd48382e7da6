"""The one tolerance table, and the comparison every conformance check goes through.

An output passes when every element satisfies |actual - reference| <= atol + rtol |reference|
(numpy.allclose's rule) against the float64 NumPy reference, and NaN / inf appear in
exactly the same places. Each row says why its numbers are what they are, and the
evidence line records the worst error measured across the suite (see README).
Tolerances are never loosened per test: a case that needs more is a finding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    reason: str


TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(
        1e-10, 1e-10,
        "Same math, different summation order: float64 rounding (2.2e-16 per op) accumulated over a "
        "few hundred dependent ops stays near 1e-13; 1e-10 leaves 1000x headroom and still "
        "catches any real bug (the smallest planted bug moves outputs by 1e-4)."),
    "float32": Tolerance(
        1e-4, 1e-4,
        "float32 unit roundoff is 6e-8; matmuls of width up to 3072, softmax and layer norm "
        "(which divides by a standard deviation) grow it to about 1e-6 per layer for unit-scale "
        "activations and a few 1e-5 through 12-layer models."),
}


@dataclass(frozen=True)
class Comparison:
    name: str
    max_abs: float
    max_rel: float
    worst_index: tuple
    passed: bool
    detail: str = ""

    def __str__(self):
        status = "ok" if self.passed else "OUT OF TOLERANCE"
        return (f"{self.name}: max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g} "
                f"at {self.worst_index} {status}{(' - ' + self.detail) if self.detail else ''}")


def compare(name: str, actual, reference, tol: Tolerance) -> Comparison:
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if actual.shape != reference.shape:
        return Comparison(name, np.inf, np.inf, (), False,
                          f"shape {actual.shape}, reference shape {reference.shape}")
    bad_actual, bad_ref = ~np.isfinite(actual), ~np.isfinite(reference)
    if (bad_actual != bad_ref).any() or (actual[bad_ref] != reference[bad_ref]).any():
        where = tuple(int(i) for i in np.argwhere((bad_actual != bad_ref) | (bad_ref & (actual != reference)))[0])
        return Comparison(name, np.inf, np.inf, where, False,
                          f"non-finite mismatch: {actual[where]} vs reference {reference[where]}")
    if actual.size == 0:
        return Comparison(name, 0.0, 0.0, (), True)
    a, r = np.where(bad_ref, 0, actual), np.where(bad_ref, 0, reference)
    err = np.abs(a - r)
    rel = err / np.maximum(np.abs(r), tol.atol)  # guarded near zero
    worst = np.unravel_index(int(np.argmax(err - tol.rtol * np.abs(r))), err.shape)
    passed = bool((err <= tol.atol + tol.rtol * np.abs(r)).all())
    return Comparison(name, float(err.max()), float(rel.max()), tuple(int(i) for i in worst), passed)


def compare_outputs(label: str, actual: dict, reference: dict, dtype: str) -> list[Comparison]:
    """Compare every output key; a missing or extra key is itself a failed comparison."""
    tol = TOLERANCES[dtype]
    results = []
    for key in sorted(reference.keys() | actual.keys()):
        name = f"{label}.{key}"
        if key not in actual or key not in reference:
            results.append(Comparison(name, np.inf, np.inf, (), False,
                                      "missing output" if key not in actual else "unexpected output"))
        else:
            results.append(compare(name, actual[key], reference[key], tol))
    return results
