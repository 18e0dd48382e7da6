"""Costs compose from components: for every registry case, the FLOPs its NumPy reference declares
(summed over its module tree) equal what torch's `FlopCounterMode` counts on the PyTorch twin,
matmul for matmul, and the parameters it declares equal the twin's own count. No test here names
a component: a new registry entry is counted here the day it is registered."""
import pytest

from conformance.backends import build
from conformance.costs import flops
from conformance.spec.registry import CASES, case_id
from conformance.suites.cases import case_data

# FlopCounterMode has no formula for the CPU scaled_dot_product_attention kernel (see
# conformance.costs.measure): the fused variants' attention is counted by the reference alone. The
# tiled loop's matmuls are plain ones, counted (its rescales are elementwise, which the counter skips).
COUNTED = [c for c in CASES if case_data(*c)[1].attention_impl != "fused"]


@pytest.mark.parametrize("case", COUNTED, ids=[case_id(c) for c in COUNTED])
def test_declared_matmul_flops_equal_flop_counter_mode(case):
    entry, cfg, w, inputs, _ = case_data(*case)
    m = build("torch", cfg, w, dtype="float32", training=False)
    declared = flops.totals(flops.collapse(entry.reference(cfg).flops(**{k: v.shape for k, v in inputs.items()})))
    counted = m.backend.count_flops(m, inputs)
    assert counted["total"] == declared["matmul"], counted["by_op"]
