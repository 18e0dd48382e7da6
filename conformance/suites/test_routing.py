"""Routing agreement, for every registry case with a mixture of experts (`feed_forward="moe"`): each
framework's choice of experts equals the float64 reference's at every token that is not a near-tie, and
its outputs match the reference's at the tokens no near-tie can reach (`conformance.compare.routing`; the
generated conformance suite compares these cases the same way, through `cases.check_case`). The near-tie
count of each case is recorded (`record_property("near_ties", n)`, in the junit XML)."""
import pytest

from conformance.backends import build
from conformance.spec import registry
from conformance.spec.registry import CASES, case_id
from conformance.suites.cases import case_data, failure_message, routed_comparison

MOE_CASES = [c for c in CASES if registry.get(c[0]).config(c[1]).feed_forward == "moe"]


@pytest.mark.parametrize("moe_case", MOE_CASES, ids=[case_id(c) for c in MOE_CASES])
def test_routing_agrees_where_unambiguous(moe_case, framework, dtype, record_property):
    _, cfg, w, _, _ = case_data(*moe_case)
    label = f"{framework}/{dtype} {case_id(moe_case)}"
    _, results, agreement = routed_comparison(label, *moe_case, build(framework, cfg, w, dtype=dtype), dtype)
    record_property("near_ties", agreement.near_tie_count)
    assert not agreement.unambiguous_disagreements(), agreement.summary()
    assert all(r.passed for r in results), failure_message(results)
