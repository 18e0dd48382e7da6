"""The suite generated from the registry: every component and model, in every framework
and dtype, against the float64 NumPy reference. No test here names a component."""
import numpy as np
import pytest

from conformance import registry
from conformance.build import build
from conformance.suite import CASES, case_data, case_id, check_case, failure_message


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_matches_reference(case, framework, dtype, device):
    results = check_case(*case, framework, dtype, device)
    assert all(r.passed for r in results), failure_message(results)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_weights_round_trip_and_count(case, framework):
    """Weights go in and come back out bit-exact, and the framework's own parameter count
    equals the canonical one: nothing dropped, duplicated or transposed on the way."""
    entry, cfg, w, _, _ = case_data(*case)
    m = build(framework, cfg, w, dtype="float32")
    back = m.weights()
    assert sorted(back) == sorted(w)
    for name in w:
        np.testing.assert_array_equal(back[name], w[name], err_msg=name)
    assert m.num_parameters() == sum(v.size for v in w.values())


def test_every_entry_has_all_three_implementations():
    for entry in registry.ENTRIES.values():
        for framework in registry.PACKAGES:
            assert callable(entry.implementation(framework)), (entry.name, framework)
