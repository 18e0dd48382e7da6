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

from conformance.backends import Built, build
from conformance.compare.gradients import _affine_scale, compare_gradient
from conformance.compare.tolerance import TOLERANCES, compare, gradient_tolerance


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
    return [p for p in failing if not any(q.startswith(p + ".") or (not p and q) for q in failing)]  # "" is the root


# ------------------------------------------------------------------------------------ gradients

def output_key(path: str, output, records: dict) -> str | None:
    """The trace key of the module at `path`'s (first call's) output: the last key under its path
    whose record equals that output (an eval-mode Dropout passes its input through untapped, a
    post-norm layer's output is also its norm's); None where the output is not traced."""
    prefix = f"{path}." if path else ""
    keys = [k for k in records if k.startswith(prefix) and "#" not in k
            and isinstance(records[k], np.ndarray) and np.shape(records[k]) == np.shape(output)
            and np.array_equal(records[k], output)]
    return keys[-1] if keys else None


def replay_gradients(framework: str, cfg, w, inputs: dict, modules: str, dtype: str = "float32",
                     built: Built | None = None, reference=None, seed: int = 0) -> list[Replayed]:
    """`replay` for the backward: every module matching the glob `modules`, in call order.

    A module's backward takes the cotangent of its output and gives its input and weight
    gradients. Running it alone on the reference's forward inputs AND the reference's cotangent
    (the reference's gradient at the module's output trace key) isolates what it computes wrong:

        introduced = | vjp_framework(x_ref, c_ref) - vjp_reference(x_ref, c_ref) |
        total      = | vjp_framework(x_fw,  c_fw)  - vjp_reference(x_ref, c_ref) |   (as in the full backward)

    both the max abs over the module's input and weight gradients; `passed`: the introduced error
    is within the gradient tolerance (a bias on its layer's [kernel; bias] scale). `reference`:
    a planted-bug reference `Built` ("numpy", float64) to replay against; modules whose output is
    not a traced tensor have no recorded cotangent and are left out.
    """
    tol = gradient_tolerance(dtype)
    ref = reference or build("numpy", cfg, w, dtype="float64")
    _, records = ref.trace(capture=modules, **inputs)
    ref_grads = ref.gradients(seed=seed, **inputs)
    target = built or build(framework, cfg, w, dtype=dtype)
    target.trace(capture=modules, **inputs)
    target_grads = target.gradients(cotangents=ref_grads.cotangents, **inputs)
    results = []
    for path, (args, kwargs, out) in ref.calls.items():
        key = output_key(path, out, records) if isinstance(out, np.ndarray) else None
        if not fnmatch.fnmatch(path, modules) or path not in target.calls or key is None \
                or key not in target_grads.activations:
            continue
        want = ref.module_gradients(path, args, kwargs, ref_grads.activations[key])
        alone = target.module_gradients(path, args, kwargs, ref_grads.activations[key])
        fw_args, fw_kwargs, _ = target.calls[path]
        in_run = target.module_gradients(path, fw_args, fw_kwargs, target_grads.activations[key])
        introduced, total, passed = 0.0, 0.0, True
        for want_group, alone_group, run_group in zip(want, alone, in_run):
            for name, r in want_group.items():
                c = compare_gradient(f"{path} d{name}", alone_group[name], r, tol, _affine_scale(name, want_group))
                introduced, passed = max(introduced, c.max_abs), passed and c.passed
                total = max(total, float(np.abs(np.asarray(run_group[name], np.float64) - r).max(initial=0.0)))
        results.append(Replayed(path, introduced, total, passed))
    return results
