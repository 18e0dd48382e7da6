"""Replay: run one module of a framework on the reference's recorded inputs.

A framework's error at an op has two sources: what the op itself computes differently
(introduced) and what it received already wrong from the ops before it (inherited).
Running the framework's module on the *reference's* recorded inputs isolates the first:

    introduced = | f_framework(x_reference) - f_reference(x_reference) |
    total      = | f_framework(x_framework) - f_reference(x_reference) |   (from the full trace)

A large total with a small introduced error is inherited: look upstream.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np

from conformance.build import Built, build
from conformance.tolerance import TOLERANCES, compare


@dataclass(frozen=True)
class Replayed:
    path: str
    introduced: float   # max abs error of the module alone, on the reference's inputs
    total: float        # max abs error of the same module's output in the full forward
    passed: bool        # introduced error within tolerance

    @property
    def inherited(self) -> float:
        return max(self.total - self.introduced, 0.0)


def _first_output(out):
    return next(iter(out.values())) if isinstance(out, dict) else out


def replay(framework: str, cfg, w, inputs: dict, modules: str, dtype: str = "float32",
           built: Built | None = None) -> list[Replayed]:
    """Replay every module whose path matches the glob `modules`, in call order."""
    reference = build("numpy", cfg, w, dtype="float64")
    reference.trace(capture=modules, **inputs)
    target = built or build(framework, cfg, w, dtype=dtype)
    target.trace(capture=modules, **inputs)
    results = []
    for path, (args, kwargs, expected) in reference.calls.items():
        if not fnmatch.fnmatch(path, modules) or path not in target.calls:
            continue
        alone = _first_output(target.replay(path, args, kwargs))
        in_run = _first_output(target.calls[path][2])
        expected = _first_output(expected)
        introduced = compare(path, alone, expected, TOLERANCES[dtype])
        total = float(np.abs(np.asarray(in_run, np.float64) - expected).max())
        results.append(Replayed(path, introduced.max_abs, total, introduced.passed))
    return results


def innermost_culprits(results: list[Replayed]) -> list[str]:
    """Modules that introduce out-of-tolerance error while none of their submodules does.

    A container replayed on good inputs still runs its faulty child, so the whole chain of
    ancestors fails too; the innermost failing module is where the fault is.
    """
    failing = [r.path for r in results if not r.passed]
    return [p for p in failing if not any(q.startswith(p + ".") for q in failing)]
