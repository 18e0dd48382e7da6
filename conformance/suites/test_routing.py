"""Routing agreement, for every registry case with a mixture of experts (`feed_forward="moe"`): each
framework's choice of experts equals the float64 reference's at every token that is not a near-tie, and
its outputs match the reference's at the tokens no near-tie can reach (`conformance.compare.routing`).
The near-tie count of each case is recorded (`record_property("near_ties", n)`, in the junit XML)."""
import numpy as np
import pytest

from conformance.backends import build
from conformance.compare import routing
from conformance.spec import registry
from conformance.spec.registry import CASES, case_id
from conformance.suites.cases import case_data, failure_message

MOE_CASES = [c for c in CASES if registry.get(c[0]).config(c[1]).feed_forward == "moe"]


def token_shape(inputs: dict) -> tuple:
    """(B, T): how the routed tokens are laid out (a model's ids, a block's (B, T, D) input)."""
    return tuple(inputs["input_ids"].shape) if "input_ids" in inputs else tuple(np.shape(inputs["x"])[:-1])


def routed(name, variant, framework, dtype, built=None):
    """(agreement, comparisons) of one framework's run of a case against the float64 reference."""
    entry, cfg, w, inputs, _ = case_data(name, variant)
    reference, ref_trace = build("numpy", cfg, w, dtype="float64").trace(**inputs)
    out, trace = (built or build(framework, cfg, w, dtype=dtype)).trace(**inputs)
    agreement = routing.agreement(ref_trace, trace, cfg.experts_per_token, dtype, token_shape(inputs), entry.is_model)
    label = f"{framework}/{dtype} {case_id((name, variant))}"
    return agreement, routing.compare_unambiguous(label, out, reference, dtype, agreement)


@pytest.mark.parametrize("moe_case", MOE_CASES, ids=[case_id(c) for c in MOE_CASES])
def test_routing_agrees_where_unambiguous(moe_case, framework, dtype, record_property):
    agreement, results = routed(*moe_case, framework, dtype)
    record_property("near_ties", agreement.near_tie_count)
    assert not agreement.unambiguous_disagreements(), agreement.summary()
    assert all(r.passed for r in results), failure_message(results)
