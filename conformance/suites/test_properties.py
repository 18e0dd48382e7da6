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


@st.composite
def rotary_case(draw):
    """Any head count and grouping, any even head width and rotated width, either pairing, any rope type,
    positions anywhere below max_positions (a cache's offset, a left-padded row's zeros)."""
    kv = draw(st.integers(1, 3))
    heads, pairs = kv * draw(st.integers(1, 3)), draw(st.integers(2, 6))
    rope_type = draw(st.sampled_from(["none", "linear", "dynamic", "llama3", "yarn"]))
    fewest = 2 if rope_type == "dynamic" else 1  # dynamic's base grows as ^(Dr / (Dr - 2)): Dr > 2
    rotated = 2 * draw(st.integers(fewest if draw(st.booleans()) else pairs, pairs))
    cfg = registry.get("rotary_embedding").tiny.replace(
        d_model=heads * 2 * pairs, num_heads=heads, num_kv_heads=kv, rotary_dim=rotated,
        rotary_pairing=draw(st.sampled_from(["half", "interleaved"])), rope_scaling=rope_type,
        rope_factor=draw(st.sampled_from([2.0, 4.0, 8.0])), max_positions=draw(st.integers(8, 64)),
        rotary_float32=draw(st.booleans()))
    batch, length = draw(st.integers(1, 3)), draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, cfg.max_positions - length + 1, (batch, 1))
    positions = np.maximum(np.arange(length)[None, :] + starts - rng.integers(0, 3, (batch, 1)), 0)
    inputs = {"q": rng.standard_normal((batch, heads, length, cfg.head_dim)),
              "k": rng.standard_normal((batch, kv, length, cfg.head_dim)), "position_ids": positions}
    return cfg, inputs, seed


@SETTINGS
@given(case=rotary_case())
def test_rotary_embedding_any_shape(case, framework, framework_twins_only):
    agree(framework, *case)


@SETTINGS
@given(width=st.integers(1, 48), rows=st.integers(1, 9), offset=st.sampled_from([0.0, 1.0]),
       scale=st.sampled_from([1e-3, 1.0, 1e3]), seed=st.integers(0, 999))
def test_rms_norm_any_width_and_scale(width, rows, offset, scale, seed, framework, framework_twins_only):
    """Any width, rows of any scale (eps matters at 1e-3), either offset."""
    cfg = registry.get("rms_norm").tiny.replace(d_model=width, num_heads=1, rms_norm_offset=offset)
    x = scale * np.random.default_rng(seed).standard_normal((2, rows, width))
    agree(framework, cfg, {"x": x}, seed)
