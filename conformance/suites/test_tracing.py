"""Traces line up by name in every framework; summary mode bounds memory; replay separates
the error an op introduces from the error it inherits."""
import numpy as np
import pytest

from conformance.weights import mapping
from conformance.core import trace
from conformance.backends.build import build
from conformance.compare.divergence import align
from conformance.compare.replay import innermost_culprits, replay
from conformance.suites.cases import CASES, case_data, case_id


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_trace_names_line_up(case, framework, framework_twins_only):
    _, cfg, w, inputs, _ = case_data(*case)
    _, reference = build("numpy", cfg, w, dtype="float64").trace(**inputs)
    _, records = build(framework, cfg, w, dtype="float64").trace(**inputs)
    expected = list(reference)
    if framework == "torch" and cfg.fused_attention:  # one SDPA kernel: no scores / probs to tap
        expected = [n for n in expected if n.rpartition(".")[2] not in ("scores", "probs")]
    assert list(records) == expected  # same names, same order


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
        correct = mapping.to_torch
        monkeypatch.setattr(mapping, "to_torch", lambda n, a: (
            correct(n, a)[0], correct(n, a)[1].T if n == "encoder.0.attention.query.kernel" else correct(n, a)[1]))
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
