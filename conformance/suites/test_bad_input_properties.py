"""Bad input drawn at random from the registry: every framework answers it the same way.

For every entry (and every variant that takes another set of inputs), hypothesis malforms one
declared input at a time (its dtype, rank, shape, values or finiteness), or leaves a required
one out, or adds one the module does not take. Each framework is called with the same inputs and
must answer identically: the same exception type and message, word for word, or (where the
change leaves the input valid: a longer sequence, another batch, an extra leading axis some
components broadcast over) the same output shapes. What is malformed for certain must raise, a
`ValueError` from the project's own code: a dtype outside `checks.FLOAT_DTYPES`,
`checks.INDEX_DTYPES`, `checks.MASK_DTYPES` for its `checks.input_kind`; NaN or inf; a 0-D or
empty array; a mask value other than 0 and 1; an id outside its table; a missing or unknown
input. Random valid inputs (any batch and length, any accepted dtype, any mask type) must not
raise anywhere.

The default tier draws `EXAMPLES` malformations per case and `VALID` valid draws; `--full` draws
`FULL_EXAMPLES`. Models are built once per case and framework; a refused call costs microseconds.
"""
from __future__ import annotations

import traceback
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance import weights
from conformance.backends.build import build
from conformance.core import checks
from conformance.spec import registry

EXAMPLES, VALID, FULL_EXAMPLES = 12, 4, 150
ROOT = Path(__file__).resolve().parents[2]
PROJECT = tuple(str(ROOT / p) for p in ("conformance", "numpy_ref", "torch_impl", "tf_impl"))

WRONG_DTYPES = {  # for each input kind, dtypes the front door refuses
    "float": ("int8", "int16", "int32", "int64", "uint8", "bool", "complex64", "object", "str"),
    "index": ("float16", "float32", "float64", "uint8", "int8", "int16", "uint16", "uint32", "uint64", "bool",
              "object", "str"),
    "mask": ("uint8", "int8", "int16", "uint16", "uint64", "complex64", "object", "str"),
}
RIGHT_DTYPES = {"float": ("float32", "float64"), "index": checks.INDEX_DTYPES,
                "mask": ("bool", "int32", "int64", "float32", "float64")}
CERTAIN = ("dtype", "values", "nonfinite", "zero_d", "empty", "missing", "unknown")  # must raise
SAME = {  # (input kind, malformation) -> the malformation it means for that kind
    ("float", "values"): "nonfinite", ("float", "index_range"): "rank",
    ("index", "values"): "index_range", ("index", "nonfinite"): "index_range",
    ("mask", "nonfinite"): "values", ("mask", "index_range"): "values",
}
UNKNOWN_NAMES = ("foo", "inputs_embeds", "labels", "past_key_values", "head_mask", "return_dict")


def _cases() -> list[tuple[str, str]]:
    """Each entry's default variant, and any variant that takes another set of inputs."""
    seen, out = set(), []
    for name, variant in registry.CASES:
        entry = registry.get(name)
        names = tuple(sorted(entry.inputs(entry.config(variant), variant, batch=1, length=2)))
        if (name, names) not in seen:
            seen.add((name, names))
            out.append((name, variant))
    return out


CASES = _cases()


@lru_cache(maxsize=None)
def model(name: str, variant: str, framework: str):
    cfg = registry.get(name).config(variant)
    return build(framework, cfg, weights.initialize(cfg))


def answer(m, inputs: dict):
    """What a call answers: ("ok", output shapes) or (exception type, message, raised in project code)."""
    try:
        with np.errstate(all="ignore"):
            out = m(**inputs)
    except Exception as e:  # noqa: BLE001  (whatever it is, every framework must say the same)
        frames = traceback.extract_tb(e.__traceback__)
        own = bool(frames) and frames[-1].filename.startswith(PROJECT)
        return (type(e).__name__, str(e).removeprefix(f"{m.framework} "), own and isinstance(e, ValueError))
    return ("ok", {k: np.shape(v) for k, v in out.items()})


@st.composite
def malformed(draw, inputs: dict, signature: dict):
    """(what was done, the malformed inputs)."""
    x = {k: v.copy() for k, v in inputs.items()}
    required = [k for k, needed in signature.items() if needed and k in x]  # none: T5's, whose cache may stand in
    how = draw(st.sampled_from(tuple(h for h in CERTAIN if required or h != "missing") + ("rank", "shape", "index_range")))
    if how == "missing":
        key = draw(st.sampled_from(required))
        del x[key]
        return f"missing {key}", x
    if how == "unknown":
        key = draw(st.sampled_from([n for n in UNKNOWN_NAMES if n not in signature]))
        x[key] = np.zeros((1, 1))
        return f"unknown {key}", x
    key = draw(st.sampled_from(sorted(x)))
    a, kind = x[key], checks.input_kind(key)
    how = SAME.get((kind, how), how)
    where = tuple(draw(st.integers(0, n - 1)) for n in a.shape)
    if how == "dtype":
        x[key] = a.astype(draw(st.sampled_from(WRONG_DTYPES[kind])))
    elif how == "values":  # a mask holding something other than 0 and 1
        value = draw(st.sampled_from([2, -1, 0.5, float("nan"), 7, -3.5]))
        a = a.astype(np.float64) if isinstance(value, float) or a.dtype == bool else a.copy()
        a[where] = value
        x[key] = a
    elif how == "nonfinite":
        a[where] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    elif how == "index_range":  # past a table's end, or negative; the relative bias's *_positions have no end
        a[where] = draw(st.sampled_from([-1, -100] + ([] if key.endswith("_positions") else [10**6])))
    elif how == "zero_d":
        x[key] = np.asarray(a.flat[0])
    elif how == "empty":
        x[key] = np.take(a, np.arange(0), axis=draw(st.integers(0, a.ndim - 1)))
    elif how == "rank" and a.ndim > 1 and draw(st.booleans()):
        x[key] = a[0]
    elif how == "rank":
        x[key] = np.repeat(a[None], draw(st.integers(1, 2)), axis=0)
    else:  # shape: one axis resized, by repeating or dropping its entries
        axis = draw(st.integers(0, a.ndim - 1))
        size = draw(st.integers(1, a.shape[axis] + 3).filter(lambda n: n != a.shape[axis]))
        x[key] = np.take(a, np.arange(size) % a.shape[axis], axis=axis)
    return f"{how} {key}", x


def _examples(config, default):
    return FULL_EXAMPLES if config.getoption("--full") else default


def _settings(n):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.mark.parametrize("case", CASES, ids=[registry.case_id(c) for c in CASES])
def test_malformed_input_gets_the_same_answer_in_every_framework(case, request):
    name, variant = case
    entry = registry.get(name)
    frameworks = request.config.mirror_frameworks
    inputs = entry.inputs(entry.config(variant), variant)
    signature = entry.signature()
    models = {f: model(name, variant, f) for f in frameworks}

    @_settings(_examples(request.config, EXAMPLES))
    @given(change=malformed(inputs, signature))
    def check(change):
        how, x = change
        answers = {f: answer(m, x) for f, m in models.items()}
        first = next(iter(answers.values()))
        assert all(a == first for a in answers.values()), f"{how}: the frameworks differ: {answers}"
        if first[0] != "ok":
            assert first[2], f"{how}: {first[0]} from outside the project's own checks: {first[1]}"
        if how.split()[0] in CERTAIN + ("index_range",):
            assert first[0] != "ok", f"{how}: accepted in every framework"

    check()


@pytest.mark.parametrize("case", CASES, ids=[registry.case_id(c) for c in CASES])
def test_random_valid_input_is_taken_by_every_framework(case, request):
    name, variant = case
    entry = registry.get(name)
    cfg = entry.config(variant)
    models = {f: model(name, variant, f) for f in request.config.mirror_frameworks}
    longest = max(1, min(8, cfg.max_positions - 2))  # input makers add up to 2 to a length

    @_settings(_examples(request.config, VALID))
    @given(batch=st.integers(1, 3), length=st.integers(1, longest), seed=st.integers(0, 2**16), data=st.data())
    def check(batch, length, seed, data):
        x = entry.inputs(cfg, variant, seed=seed, batch=batch, length=length)
        x = {k: v.astype(data.draw(st.sampled_from(RIGHT_DTYPES[checks.input_kind(k)]), label=k)) for k, v in x.items()}
        answers = {f: answer(m, x) for f, m in models.items()}
        assert all(a[0] == "ok" for a in answers.values()), f"valid inputs refused: {answers}"
        assert len({str(a) for a in answers.values()}) == 1, f"output shapes differ: {answers}"

    check()
