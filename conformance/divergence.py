"""Line two traces up by name and find the first op that leaves tolerance.

Traces are dicts in execution order (`Built.trace`). Names are the same in every
framework by construction, so alignment is by name; an op present in one trace and not
the other is an error that lists the names, never silently skipped.
"""
from __future__ import annotations

from conformance.tolerance import TOLERANCES, Comparison, compare


def align(reference: dict, actual: dict) -> list[str]:
    missing = [n for n in reference if n not in actual]
    extra = [n for n in actual if n not in reference]
    if missing or extra:
        raise ValueError(f"traces do not line up: missing ops {missing}, extra ops {extra}")
    return list(reference)


def compare_traces(reference: dict, actual: dict, dtype: str) -> list[Comparison]:
    tol = TOLERANCES[dtype]
    return [compare(name, actual[name], reference[name], tol) for name in align(reference, actual)]


def first_divergence(reference: dict, actual: dict, dtype: str) -> Comparison | None:
    """The first op, in execution order, whose output is out of tolerance; None if all agree."""
    return next((c for c in compare_traces(reference, actual, dtype) if not c.passed), None)
