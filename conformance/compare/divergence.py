"""Line two traces up by name and find the first op that leaves tolerance.

Traces are dicts in execution order (`Built.trace`). Names are the same in every
framework by construction, so alignment is by name; an op present in one trace and not
the other is an error that lists the names, never silently skipped.
"""
from __future__ import annotations

import numpy as np

from conformance.compare.tolerance import TOLERANCES, Comparison, compare
from conformance.core.trace import Summary


def align(reference: dict, actual: dict) -> list[str]:
    missing = [n for n in reference if n not in actual]
    extra = [n for n in actual if n not in reference]
    if missing or extra:
        raise ValueError(f"traces do not line up: missing ops {missing}, extra ops {extra}")
    return list(reference)


def compare_summaries(name: str, actual: Summary, reference: Summary, tol) -> Comparison:
    """Summary mode compares statistics, not elements: a weaker check, labelled as such.

    `max_abs` is the largest difference among mean, std and max |x|, each held to the
    tolerance scaled by the reference's max |x|; NaN/inf counts must be equal.
    """
    diffs = [abs(actual.mean - reference.mean), abs(actual.std - reference.std),
             abs(actual.abs_max - reference.abs_max)]
    worst = max(diffs)
    passed = (actual.shape == reference.shape and actual.nonfinite == reference.nonfinite
              and worst <= tol.atol + tol.rtol * reference.abs_max)
    return Comparison(name, worst, worst / max(reference.abs_max, tol.atol), (), passed, "summary statistics")


def compare_traces(reference: dict, actual: dict, dtype: str) -> list[Comparison]:
    tol = TOLERANCES[dtype]
    out = []
    for name in align(reference, actual):
        a, r = actual[name], reference[name]
        if isinstance(a, Summary) or isinstance(r, Summary):
            a = a if isinstance(a, Summary) else Summary.of(np.asarray(a))
            r = r if isinstance(r, Summary) else Summary.of(np.asarray(r))
            out.append(compare_summaries(name, a, r, tol))
        else:
            out.append(compare(name, a, r, tol))
    return out


def first_divergence(reference: dict, actual: dict, dtype: str) -> Comparison | None:
    """The first op, in execution order, whose output is out of tolerance; None if all agree."""
    return next((c for c in compare_traces(reference, actual, dtype) if not c.passed), None)
