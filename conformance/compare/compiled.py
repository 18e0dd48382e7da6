"""Compiled execution against the reference and against eager, and the first module a compiler changes.

    run = compiled_run("torch", "inductor", cfg, w, inputs, reference)
    run.passed                  # every output within the tolerance row of the float64 reference
    run.eager                   # {output key: max |compiled - eager|}
    run.first_diverging         # (module path, max abs) of the first module whose compiled output differs
    run.largest                 # (module path, max abs) of the module that differs most

A compiler is free to fuse, reorder and approximate (inductor fuses a layer norm's reductions
into one loop, XLA reassociates sums, either may swap exp or erf for a polynomial): a compiled
forward that still passes the tolerance row may differ from eager in its last bits, and where
it does the module that starts it is found the way `replay` finds an op's own error. Eager
runs once with every module's inputs recorded; then each module is compiled alone, called on
the eager module's recorded inputs and compared with the eager module's output:

    module difference = | compiled_module(x_eager) - eager_module(x_eager) |

Modules come in the order their calls finished (a module after its submodules), so the first
that differs at all is the innermost one where the compiler's numerics begin. The result's
shape is the one `conformance.compare.keras_backends` gives Keras on JAX under `jax.jit`, so the
two are reported together.
"""
from __future__ import annotations

import contextlib
import fnmatch
import time
from dataclasses import dataclass, field

import numpy as np

from conformance.backends import backend, build
from conformance.compare.tolerance import Comparison, compare_outputs


@dataclass
class CompiledRun:
    """One framework's forward under one compile mode, against the reference and against eager."""
    framework: str
    mode: str
    reference: list = field(default_factory=list)  # [Comparison] of each output with the float64 reference
    eager: dict = field(default_factory=dict)       # {output key: max |compiled - eager|}
    modules: list = field(default_factory=list)     # [(module path, max |compiled alone - eager|)], call order
    compile_seconds: float = 0.0                    # the whole model's first compiled call (tracing + compiling)
    modules_seconds: float = 0.0                    # compiling and running every module alone
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.reference) and all(c.passed for c in self.reference)

    @property
    def first_diverging(self) -> tuple[str, float] | None:
        """The first module, in call order, whose compiled output differs from eager at all; None: none does."""
        return next(((p, d) for p, d in self.modules if d > 0), None)

    @property
    def largest(self) -> tuple[str, float] | None:
        """The module whose compiled output differs most from eager (the first of equals); None: none differs."""
        worst = max(self.modules, key=lambda m: m[1], default=None)
        return worst if worst is not None and worst[1] > 0 else None

    @property
    def worst_reference(self) -> Comparison | None:
        return max(self.reference, key=lambda c: c.max_abs, default=None)


def max_abs(a, b) -> float:
    """max |a - b| over one output (0 for empty), in float64; a dict output: over its first value."""
    a, b = (next(iter(x.values())) if isinstance(x, dict) else x for x in (a, b))
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a compiled output has shape {a.shape}, its eager output {b.shape}")
    return float(np.abs(a - b).max(initial=0.0))


def _replay_arguments(args, kwargs):
    """A recorded call as `Built.replay` takes it: `training` is the Built's to set (Keras records it)."""
    return list(args), {k: v for k, v in kwargs.items() if k != "training"}


def compiled_run(framework: str, mode: str, cfg, w: dict, inputs: dict, reference: dict, dtype: str = "float32",
                 modules: str | None = "*", planted: tuple | None = None, built=None, progress=None) -> CompiledRun:
    """`framework`'s forward compiled by `mode`, against `reference` (float64 outputs) and against eager.

    `modules`: a glob over module paths to compile alone and compare (None: outputs only, one compile).
    `planted`: (module path, transform) that changes that module's output to transform(output) in
    the compiled path only (a compiler-like change, to prove it is found and named). `built`: an
    eager Built of the case to reuse (its module is the one compiled; no copy of the weights).
    `progress(label)` is called before the whole compile and before each module's."""
    progress = progress or (lambda label: None)
    eager = built or build(framework, cfg, w, dtype=dtype)
    eager.backend.require_compile(mode)
    eager.backend.reset_compiled()
    eager_out, _ = eager.trace(capture=modules, **inputs) if modules else (eager(**inputs), None)
    calls = {p: c for p, c in (eager.calls.items() if modules else ()) if p and fnmatch.fnmatch(p, modules)}
    run = CompiledRun(framework, mode)
    compiled = eager.compiled(mode)
    label = f"{framework}/{dtype} compile={mode}"
    with eager.backend.transforming(eager.submodule(planted[0]), planted[1]) if planted else contextlib.nullcontext():
        progress(f"{label}: compiling the whole forward")
        start = time.perf_counter()
        out = compiled(**inputs)
        run.compile_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for i, (path, (args, kwargs, expected)) in enumerate(calls.items()):
            progress(f"{label}: module {i + 1}/{len(calls)} {path}")
            run.modules.append((path, max_abs(compiled.replay(path, *_replay_arguments(args, kwargs)), expected)))
        run.modules_seconds = time.perf_counter() - start
    eager.backend.reset_compiled()  # a planted module's graph is not served to a later compile
    run.reference = compare_outputs(label, out, reference, dtype)
    run.eager = {k: max_abs(out[k], eager_out[k]) for k in eager_out}
    run.modules.append(("", max(run.eager.values(), default=0.0)))  # the root: the whole forward, compiled whole
    return run


def modes_of(frameworks, modes=None) -> list[tuple[str, str]]:
    """(framework, mode) pairs: each framework's `compile_modes`, or those of them in `modes`; a mode that no
    framework of `frameworks` has is refused, naming the modes each one has."""
    have = {f: list(backend(f).compile_modes) for f in frameworks}
    unknown = [m for m in modes or () if not any(m in h for h in have.values())]
    if unknown:
        raise ValueError(f"modes must name compile modes of frameworks {list(frameworks)}, "
                         f"{', '.join(f'{f}: {h}' for f, h in have.items())}; received modes={unknown}")
    return [(f, m) for f, h in have.items() for m in h if modes is None or m in modes]


def compiled_runs(cfg, w: dict, inputs: dict, pairs, modules: str | None = "*", progress=None) -> list[CompiledRun]:
    """`compiled_run` for every (framework, mode) of `pairs` on one model, against one float64 reference;
    one eager Built per framework, whose module each of its modes compiles."""
    reference = build("numpy", cfg, w, dtype="float64")(**inputs)
    runs, eager = [], {}
    for framework, mode in pairs:
        eager.setdefault(framework, build(framework, cfg, w))
        runs.append(compiled_run(framework, mode, cfg, w, inputs, reference, modules=modules,
                                 built=eager[framework], progress=progress))
    return runs


def introduced(run: CompiledRun, baseline: CompiledRun) -> list[str]:
    """The modules whose difference from eager in `run` is not what it is in `baseline` (the same case
    and mode, unchanged): where a change to `run`'s compiled path shows, in call order."""
    before = dict(baseline.modules)
    return [p for p, d in run.modules if d != before.get(p)]


def summary_rows(runs) -> list[tuple]:
    """One row a run: framework, mode, worst vs reference (and pass), worst vs eager, first diverging, largest."""
    def where(m):
        return "none" if m is None else f"{m[0] or '(root)'} ({m[1]:.2e})"
    rows = []
    for r in runs:
        if r.error:
            rows.append((r.framework, r.mode, f"error: {r.error}", "FAIL", "", "", "", ""))
            continue
        worst = r.worst_reference
        rows.append((r.framework, r.mode, f"{worst.max_abs:.2e}" if worst else "-", "pass" if r.passed else "FAIL",
                     f"{max(r.eager.values(), default=0.0):.2e}", where(r.first_diverging), where(r.largest),
                     f"{r.compile_seconds:.1f}"))
    return rows


HEADERS = ("framework", "mode", "worst vs reference", "tolerance", "worst vs eager", "first diverging module",
           "largest", "compile s")
