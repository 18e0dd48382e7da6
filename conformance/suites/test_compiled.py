"""Compiled execution, generated from the registry: every case, in every framework's compile modes
(`Backend.compile_modes`: torch's inductor, tf's tf.function and XLA), against the float64 reference
through the float32 tolerance row, and against eager module by module (`conformance.compare.compiled`).

A compiler-like change planted in one module of the compiled path only (a 2^-12 relative error, what
an approximate reciprocal without its Newton step leaves) must be found and pinned to that module.
The default tier runs one representative case (an encoder layer: attention, norms, GELU MLP,
residuals) in every mode; `--full` runs every case. No test here names a component.
"""
from functools import lru_cache

import numpy as np
import pytest

from conformance.backends import FRAMEWORKS, backend, build, supports
from conformance.compare.compiled import compiled_run, introduced, modes_of
from conformance.compare.tolerance import TOLERANCES
from conformance.spec import registry
from conformance.spec.registry import CASES, case_id
from conformance.suites.cases import case_data

DEFAULT = [("encoder_layer", "default")]
MODES = modes_of([f for f in FRAMEWORKS if backend(f).compile_modes])
APPROXIMATE = 2.0 ** -12  # relative error of an approximate reciprocal (rcpps) left unrefined


# (framework, mode) -> a Config field value it cannot compile, and what was measured: declared, and the
# declaration checked (`test_a_declared_miscompile_still_fails`: the day the compiler changes, it says so)
MISCOMPILES = {
    ("tf", "xla"): (("feed_forward", "moe"), "a mixture of experts' per-expert token lists (keras.ops.nonzero) "
                                             "have data-dependent length: XLA's outputs are wrong (max abs 56)"),
}


def miscompiled(case, framework, mode) -> bool:
    declared = MISCOMPILES.get((framework, mode))
    return declared is not None and getattr(registry.get(case[0]).config(case[1]), declared[0][0]) == declared[0][1]


def combos(cases):
    return [(c, f, m) for c in cases for f, m in MODES if supports(f, c, "float32", "cpu") is None
            and not miscompiled(c, f, m)]


def tiers():
    full = [pytest.param(*x, marks=pytest.mark.full, id=f"{case_id(x[0])}-{x[1]}-{x[2]}")
            for x in combos([c for c in CASES if c not in DEFAULT])]
    return [pytest.param(*x, id=f"{case_id(x[0])}-{x[1]}-{x[2]}") for x in combos(DEFAULT)] + full


@lru_cache(maxsize=None)
def run_of(case, framework, mode):
    _, cfg, w, inputs, reference = case_data(*case)
    return compiled_run(framework, mode, cfg, w, inputs, reference)


def approximate(y):
    """Every tensor of a module's output off by APPROXIMATE, relative; anything else as it was."""
    if isinstance(y, dict):
        return {k: approximate(v) for k, v in y.items()}
    if isinstance(y, (tuple, list)):
        return type(y)(approximate(v) for v in y)
    return y * (1.0 + APPROXIMATE) if hasattr(y, "dtype") and "float" in str(y.dtype) else y


@pytest.mark.parametrize("case,framework,mode", tiers())
def test_compiled_matches_reference_and_eager(case, framework, mode):
    """The compiled forward passes the float32 row against the reference, stays within that row of eager,
    and every module was compiled alone and measured against its eager self."""
    run = run_of(case, framework, mode)
    reference = case_data(*case)[4]
    assert run.passed, "\n".join(str(c) for c in run.reference if not c.passed)
    tol = TOLERANCES["float32"]
    assert sorted(run.eager) == sorted(reference)
    for key, difference in run.eager.items():
        bound = tol.atol + max(tol.rtol, tol.scale_rtol) * float(np.abs(reference[key]).max(initial=0.0))
        assert difference <= bound, f"{key}: compiled and eager differ by {difference:.3e} > {bound:.3e}"
    assert run.modules[-1] == ("", max(run.eager.values()))
    assert all(np.isfinite(d) and d >= 0 for _, d in run.modules)


def leaf_in_the_middle(run) -> str:
    """A module none of whose submodules was called, near the middle of the call order (the root if alone)."""
    paths = [p for p, _ in run.modules]
    leaves = [p for p in paths if p and not any(q.startswith(p + ".") for q in paths)]
    return leaves[len(leaves) // 2] if leaves else ""


@pytest.mark.parametrize("case,framework,mode", tiers())
def test_planted_compiler_change_is_pinned_to_its_module(case, framework, mode):
    """The change shows first at the planted module, after it only in the modules that contain it, and
    in the whole compiled forward's outputs; the eager path is untouched."""
    clean = run_of(case, framework, mode)
    _, cfg, w, inputs, reference = case_data(*case)
    path = leaf_in_the_middle(clean)
    planted = compiled_run(framework, mode, cfg, w, inputs, reference, planted=(path, approximate))
    changed = introduced(planted, clean)
    assert changed and changed[0] == path, (path, changed)
    assert all(path.startswith(p + ".") or not p or p == path for p in changed), changed
    assert dict(planted.modules)[path] > dict(clean.modules)[path]
    assert planted.eager != clean.eager
    assert run_of(case, framework, mode) is clean and introduced(compiled_run(
        framework, mode, cfg, w, inputs, reference, modules=None), clean) == []  # nothing planted stays behind


@pytest.mark.parametrize("framework", FRAMEWORKS + ("onnx",))
def test_a_mode_of_another_framework_is_refused_by_name(framework):
    cfg, w = case_data("linear", "default")[1:3]
    mine = list(backend(framework).compile_modes)
    for mode in ["jit", *[m for f, m in MODES if f != framework]]:
        with pytest.raises(ValueError) as e:
            build(framework, cfg, w, compile=mode)
        assert str(e.value) == (f"compile must be None or one of {mine} for framework={framework!r}; "
                                f"received compile={mode!r}")


def test_a_compiled_build_refuses_tracing_and_gradients_by_name():
    _, cfg, w, inputs, _ = case_data("linear", "default")
    for framework, mode in MODES:
        m = build(framework, cfg, w, compile=mode)
        assert m.compile == mode and m.framework == framework
        eager = build(framework, cfg, w)
        assert eager.compiled(mode).module is eager.module  # the same weights, not a copy
        for name, call in [("trace()", lambda: m.trace(**inputs)), ("gradients()", lambda: m.gradients(**inputs))]:
            with pytest.raises(ValueError, match=rf"^{name[:-2]}\(\) runs the eager modules; this {framework} "
                                                 rf"build has compile='{mode}'"):
                call()


def test_modes_of_names_the_modes_each_framework_has():
    assert modes_of(["torch", "tf"]) == [("torch", "inductor"), ("tf", "function"), ("tf", "xla")]
    assert modes_of(["tf"], ["xla"]) == [("tf", "xla")]
    with pytest.raises(ValueError, match=r"modes must name compile modes of frameworks \['tf'\], tf: "
                                         r"\['function', 'xla'\]; received modes=\['inductor'\]"):
        modes_of(["tf"], ["inductor"])


@pytest.mark.parametrize("framework,mode", sorted(MISCOMPILES))
def test_a_declared_miscompile_still_fails(framework, mode):
    """What `MISCOMPILES` declares is measured, not assumed: the compiled forward of the smallest case with
    that field fails the float32 row against the reference (while its eager forward passes the suite)."""
    (field, value), _ = MISCOMPILES[(framework, mode)]
    case = next(c for c in CASES if getattr(registry.get(c[0]).config(c[1]), field) == value)
    assert not run_of(case, framework, mode).passed, f"{case_id(case)} now compiles under {framework} {mode}"
