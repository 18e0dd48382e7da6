"""The full-size tier (`pytest --full`): bert-base, gpt2 and BERT's descendants (roberta-base,
distilbert-base, albert-base-v2, electra-small, deberta-v3-small) at their published sizes, every
framework in float32 against the float64 reference and, for the descendants, against transformers'
own model on the same weights, and each framework's own parameter count against the published one.
Minutes, not seconds: not in the default run."""
import pytest

from conformance.spec import presets
from conformance.spec import families
from conformance import weights
from conformance.backends.build import build
from conformance.compare.tolerance import compare_outputs

DESCENDANTS = {"roberta-base": 124_645_632, "distilbert-base": 66_362_880, "albert-base-v2": 11_683_584,
               "electra-small": 13_483_008, "deberta-v3-small": 141_304_320}
PUBLISHED = {"bert-base": 109_482_240, "gpt2": 124_439_808, **DESCENDANTS}


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



@pytest.fixture(scope="module")
def full_descendant(request):
    from conformance.oracles import transformers as hf
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
