"""The full-size tier (`pytest --full`): bert-base, gpt2, t5-small, bart-base, llama3.2-1b,
vit-base-patch16-224 and BERT's descendants (roberta-base, distilbert-base, albert-base-v2,
electra-small, deberta-v3-small) at their published sizes, every framework in float32 against the
float64 reference, each framework's own parameter count against the published one, and
`transformers`' own model of the same weights: against the reference (the base presets) and against
every framework at the attended positions (the descendants). Minutes, not seconds: not in the default
run. llama3.2-1b is 4.9 GB a copy in float32 and 9.9 GB in float64: the fixture keeps the weights and
the reference's outputs, and each framework's model lives for its own test only (peak about 15 GB)."""
import pytest

from conformance.spec import presets
from conformance.spec import families
from conformance import weights
from conformance.backends.build import build
from conformance.compare.tolerance import compare_outputs
from conformance.oracles import transformers as hf

BASE = {"bert-base": 109_482_240, "gpt2": 124_439_808, "t5-small": 60_506_624, "bart-base": 139_420_416,
        "llama3.2-1b": 1_235_814_400, "vit-base-patch16-224": 86_389_248}
DESCENDANTS = {"roberta-base": 124_645_632, "distilbert-base": 66_362_880, "albert-base-v2": 11_683_584,
               "electra-small": 13_483_008, "deberta-v3-small": 141_304_320}
PUBLISHED = {**BASE, **DESCENDANTS}


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
@pytest.mark.parametrize("full_model", list(BASE), indirect=True)
def test_full_size_transformers_model(full_model):
    """The family's transformers class, loaded from `weights.to_hf` of the same weights, float32."""
    name, cfg, w, inputs, reference = full_model
    theirs = hf.run(cfg, w, inputs, "sdpa", "float32")
    keys = sorted(set(theirs) & set(reference))
    assert keys, f"no output in common: transformers {sorted(theirs)}, reference {sorted(reference)}"
    results = compare_outputs(f"transformers {name}", {k: theirs[k] for k in keys}, reference, "float32")
    assert all(r.passed for r in results), "\n".join(map(str, results))


@pytest.fixture(scope="module")
def full_descendant(request):
    cfg = presets.get(request.param)
    w = weights.initialize(cfg, seed=0)
    inputs = families.get(cfg.kind).inputs(cfg, batch=2, length=128)
    return request.param, cfg, w, inputs, hf.run(cfg, w, inputs, "eager", "float32")


@pytest.mark.full
@pytest.mark.parametrize("full_descendant", list(DESCENDANTS), indirect=True)
def test_full_size_descendant_matches_transformers(full_descendant, framework):
    """Every framework in float32 against transformers in float32, at the attended positions (DeBERTa leaves
    its padded queries to each library), and the framework's own parameter count against transformers'."""
    from conformance.costs import params
    name, cfg, w, inputs, expected = full_descendant
    m = build(framework, cfg, w, dtype="float32")
    assert m.num_parameters() == DESCENDANTS[name] == params.transformers_count(cfg)["total"]
    ours = m(**inputs)
    keep = inputs["attention_mask"] > 0
    results = [compare_outputs(f"{framework} {name} vs transformers", {k: ours[k][keep] if ours[k].ndim > 2 else ours[k]},
                               {k: expected[k][keep] if expected[k].ndim > 2 else expected[k]}, "float32")[0]
               for k in sorted(set(ours) & set(expected))]
    assert results and all(r.passed for r in results), "\n".join(map(str, results))
