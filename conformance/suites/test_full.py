"""The full-size tier (`pytest --full`): bert-base, gpt2, t5-small, bart-base and llama3.2-1b at
their published sizes, every framework in float32 against the float64 reference, each framework's own
parameter count against the published one, and `transformers`' own model of the same weights
against the reference. Minutes, not seconds: not in the default run. llama3.2-1b is 4.9 GB a
copy in float32 and 9.9 GB in float64: the fixture keeps the weights and the reference's
outputs, and each framework's model lives for its own test only (peak about 15 GB)."""
import pytest

from conformance.spec import presets
from conformance.spec import families
from conformance import weights
from conformance.backends.build import build
from conformance.compare.tolerance import compare_outputs
from conformance.oracles import transformers as hf

PUBLISHED = {"bert-base": 109_482_240, "gpt2": 124_439_808, "t5-small": 60_506_624, "bart-base": 139_420_416,
             "llama3.2-1b": 1_235_814_400}


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


@pytest.mark.full
@pytest.mark.parametrize("full_model", list(PUBLISHED), indirect=True)
def test_full_size_transformers_model(full_model):
    """The family's transformers class, loaded from `weights.to_hf` of the same weights, float32."""
    name, cfg, w, inputs, reference = full_model
    theirs = hf.run(cfg, w, inputs, "sdpa", "float32")
    keys = sorted(set(theirs) & set(reference))
    assert keys, f"no output in common: transformers {sorted(theirs)}, reference {sorted(reference)}"
    results = compare_outputs(f"transformers {name}", {k: theirs[k] for k in keys}, reference, "float32")
    assert all(r.passed for r in results), "\n".join(map(str, results))
