"""Traces line up by name in every framework; summary mode bounds memory; replay separates
the error an op introduces from the error it inherits."""
import numpy as np
import pytest

from conformance.backends import torch_backend
from conformance.spec.leaves import Leaf
from conformance.core import trace
from conformance.backends.build import build
from conformance.compare.divergence import align
from conformance.compare.replay import innermost_culprits, replay
from conformance.spec.registry import CASES, case_id
from conformance.suites.cases import case_data


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_trace_names_line_up(case, framework, framework_twins_only):
    _, cfg, w, inputs, _ = case_data(*case)
    _, reference = build("numpy", cfg, w, dtype="float64").trace(**inputs)
    _, records = build(framework, cfg, w, dtype="float64").trace(**inputs)
    assert list(records) == list(reference)  # same names, same order (a fused attention's too)


def test_tracing_off_is_a_shared_no_op():
    assert trace.tap_for(object()) is trace.untraced
    x = np.ones(3)
    assert trace.untraced("anything", x) is x


def test_summary_mode_keeps_statistics_except_what_is_kept(framework):
    _, cfg, w, inputs, _ = case_data("bert", "default")
    m = build(framework, cfg, w, dtype="float64")
    _, full = m.trace(**inputs)
    _, summary = m.trace(summary=True, full="encoder.1.attention.probs", **inputs)
    assert list(summary) == list(full)
    assert isinstance(summary["encoder.1.attention.probs"], np.ndarray)
    s = summary["encoder.0.attention.probs"]
    assert isinstance(s, trace.Summary) and s.shape == full["encoder.0.attention.probs"].shape
    assert s == trace.Summary.of(full["encoder.0.attention.probs"])
    assert s.abs_max == pytest.approx(np.abs(full["encoder.0.attention.probs"]).max())


def test_missing_ops_are_named():
    with pytest.raises(ValueError, match=r"missing ops \['b'\], extra ops \['c'\]"):
        align({"a": 1, "b": 2}, {"a": 1, "c": 3})


def test_replay_separates_introduced_from_inherited(monkeypatch, framework, framework_twins_only):
    """A query kernel loaded untransposed: replay blames layer 0's query projection alone;
    everything after it carries the error (total) without introducing it."""
    _, cfg, w, inputs, _ = case_data("bert", "default")
    if framework == "torch":
        correct = torch_backend.canonical_names
        monkeypatch.setattr(torch_backend, "canonical_names", lambda module: {  # the transpose forgotten once
            c: (key, Leaf(leaf.canonical, leaf.external) if c == "encoder.0.attention.query.kernel" else leaf)
            for c, (key, leaf) in correct(module).items()})
        buggy = build("torch", cfg, w, dtype="float32")
    else:
        broken = dict(w)
        broken["encoder.0.attention.query.kernel"] = w["encoder.0.attention.query.kernel"].T.copy()
        buggy = build(framework, cfg, broken, dtype="float32")
    replayed = replay(framework, cfg, w, inputs, "encoder.*", built=buggy)
    results = {r.path: r for r in replayed}
    assert innermost_culprits(replayed) == ["encoder.0.attention.query"]
    assert not results["encoder.0.attention"].passed  # its container fails with it
    downstream = results["encoder.1.feed_forward"]
    assert downstream.passed and downstream.total > 100 * downstream.introduced
