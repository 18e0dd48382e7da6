"""The full-size tier (`pytest --full`): bert-base and gpt2 at their published sizes,
every framework in float32 against the float64 reference, and each framework's own
parameter count against the published one. Minutes, not seconds: not in the default run."""
import pytest

from conformance.spec import presets
from conformance.spec import families
from conformance import weights
from conformance.backends.build import build
from conformance.compare.tolerance import compare_outputs

PUBLISHED = {"bert-base": 109_482_240, "gpt2": 124_439_808}


@pytest.fixture(scope="module")
def full_model(request):
    cfg = presets.get(request.param)
    w = weights.initialize(cfg, seed=0)
    inputs = families.get(cfg.kind).inputs(cfg, batch=2, length=128)
    return request.param, cfg, w, inputs, build("numpy", cfg, w, dtype="float64")(**inputs)


@pytest.mark.full
@pytest.mark.parametrize("full_model", list(PUBLISHED), indirect=True)
def test_full_size_model(full_model, framework):
    name, cfg, w, inputs, reference = full_model
    m = build(framework, cfg, w, dtype="float32")
    assert m.num_parameters() == PUBLISHED[name]
    results = compare_outputs(f"{framework} {name}", m(**inputs), reference, "float32")
    assert all(r.passed for r in results), "\n".join(map(str, results))
