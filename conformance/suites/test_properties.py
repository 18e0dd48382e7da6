"""Property-based cases: hypothesis draws batch, lengths, heads, widths and masks, and
every framework must agree with the reference on each draw (float64 tolerance)."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.spec import registry
from conformance import weights
from conformance.backends.build import build
from conformance.compare.tolerance import compare_outputs

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def attention_case(draw, name):
    heads = draw(st.integers(1, 4))
    head_dim = draw(st.integers(1, 6))
    batch, length = draw(st.integers(1, 3)), draw(st.integers(1, 9))
    causal = draw(st.booleans())
    cfg = registry.get(name).tiny.replace(d_model=heads * head_dim, num_heads=heads, d_ff=3 * heads * head_dim,
                                          causal=causal, norm_first=draw(st.booleans()))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((batch, length, cfg.d_model))}
    if draw(st.booleans()):  # a padding mask with at least one visible key per row
        keep = rng.integers(1, length + 1, batch)
        inputs["mask"] = np.arange(length)[None, :] < keep[:, None]
    return cfg, inputs, seed


def agree(framework, cfg, inputs, seed):
    w = weights.initialize(cfg, seed=seed, std=0.5)
    reference = build("numpy", cfg, w, dtype="float64")(**inputs)
    out = build(framework, cfg, w, dtype="float64")(**inputs)
    results = compare_outputs(f"{framework} {cfg}", out, reference, "float64")
    assert all(r.passed for r in results), "\n".join(str(r) for r in results)


@SETTINGS
@given(case=attention_case("multi_head_attention"))
def test_multi_head_attention_any_shape(case, framework, framework_twins_only):
    agree(framework, *case)


@SETTINGS
@given(case=attention_case("encoder_layer"))
def test_encoder_layer_any_shape(case, framework, framework_twins_only):
    agree(framework, *case)


@SETTINGS
@given(batch=st.integers(1, 3), heads=st.integers(1, 4), t=st.integers(1, 8), s=st.integers(1, 8),
       density=st.floats(0.0, 1.0), fill=st.sampled_from([-1e4, -1e9, float("-inf")]), seed=st.integers(0, 999))
def test_masked_softmax_any_mask(batch, heads, t, s, density, fill, seed, framework, framework_twins_only):
    """Any boolean mask, fully masked rows included: rows sum to 1, or are all zeros."""
    rng = np.random.default_rng(seed)
    cfg = registry.get("softmax").tiny.replace(num_heads=heads, d_model=4 * heads, mask_fill=fill)
    inputs = {"scores": 10 * rng.standard_normal((batch, heads, t, s)),
              "mask": rng.random((batch, 1, t, s)) < density}
    reference = build("numpy", cfg, {}, dtype="float64")(**inputs)["output"]
    rows = reference.sum(-1)
    visible = inputs["mask"].any(-1)
    np.testing.assert_allclose(rows, np.broadcast_to(visible, rows.shape).astype(float), atol=1e-12)
    agree(framework, cfg, inputs, seed)
