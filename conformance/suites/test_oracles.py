"""The libraries' own layers agree with the float64 reference, given the same weights.

Each oracle is checked against the reference in float64 and float32 with the same
tolerance table as the mirrors. A twin that matches the reference therefore matches
`torch.nn` and `keras.layers` too; the last test holds the twins against the library
layers directly.
"""
import numpy as np
import pytest

from conformance.oracles import layers as oracles
from conformance.spec import registry
from conformance.spec.families.llama import rope_parameters
from conformance.suites.cases import case_data
from conformance.compare.tolerance import TOLERANCES, compare

ORACLES = [
    # (oracle, registry case, input names the oracle takes)
    (oracles.torch_sdpa, ("scaled_dot_product_attention", "default"), ("q", "k", "v", "mask")),
    (oracles.torch_sdpa, ("scaled_dot_product_attention", "padding_causal"), ("q", "k", "v", "mask")),
    (oracles.torch_multi_head_attention, ("multi_head_attention", "default"), ("x", "mask")),
    (oracles.torch_multi_head_attention, ("multi_head_attention", "causal"), ("x", "mask")),
    (oracles.torch_multi_head_attention, ("multi_head_attention", "cross"), ("x", "context", "mask")),
    (oracles.torch_multi_head_attention, ("multi_head_attention", "no_bias"), ("x", "mask")),
    (oracles.torch_encoder_layer, ("encoder_layer", "default"), ("x", "mask")),
    (oracles.torch_encoder_layer, ("encoder_layer", "pre_norm_causal"), ("x", "mask")),
    (oracles.torch_decoder_layer, ("decoder_layer", "default"), ("x", "memory", "mask", "memory_mask")),
    (oracles.torch_decoder_layer, ("decoder_layer", "pre_norm"), ("x", "memory", "mask", "memory_mask")),
    (oracles.torch_layer_norm, ("layer_norm", "eps_1e-5"), ("x",)),
    (oracles.keras_multi_head_attention, ("multi_head_attention", "default"), ("x", "mask")),
    (oracles.keras_multi_head_attention, ("multi_head_attention", "causal"), ("x", "mask")),
    (oracles.keras_multi_head_attention, ("multi_head_attention", "cross"), ("x", "context", "mask")),
    (oracles.keras_multi_head_attention, ("multi_head_attention", "no_bias"), ("x", "mask")),
    (oracles.keras_layer_norm, ("layer_norm", "eps_1e-3"), ("x",)),
    (oracles.torch_rms_norm, ("rms_norm", "default"), ("x",)),
    (oracles.torch_rms_norm, ("rms_norm", "eps_1e-5"), ("x",)),
    (oracles.torch_rms_norm, ("rms_norm", "offset"), ("x",)),
    (oracles.keras_rms_norm, ("rms_norm", "default"), ("x",)),
    (oracles.keras_rms_norm, ("rms_norm", "offset"), ("x",)),
    (oracles.torch_silu, ("activation", "silu"), ("x",)),
    (oracles.keras_silu, ("activation", "silu"), ("x",)),
    (oracles.transformers_gated_feed_forward, ("gated_feed_forward", "default"), ("x",)),
    (oracles.transformers_gated_feed_forward, ("gated_feed_forward", "gelu_tanh"), ("x",)),
    (oracles.transformers_gated_feed_forward, ("gated_feed_forward", "bias"), ("x",)),
]
IDS = [f"{o.__name__}-{c[0]}[{c[1]}]" for o, c, _ in ORACLES]


def run_oracle(oracle, case, names, dtype):
    _, cfg, w, inputs, reference = case_data(*case)
    args = {n: inputs.get(n) for n in names}
    if oracle is oracles.torch_sdpa:
        return oracle(cfg, **args, dtype=dtype), reference["output"]
    return oracle(cfg, w, **args, dtype=dtype), reference["output"]


@pytest.mark.parametrize("oracle,case,names", ORACLES, ids=IDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_library_layer_matches_reference(oracle, case, names, dtype):
    out, reference = run_oracle(oracle, case, names, dtype)
    result = compare(f"{oracle.__name__} {case} {dtype}", out, reference, TOLERANCES[dtype])
    assert result.passed, str(result)


@pytest.mark.parametrize("oracle,case,names", ORACLES, ids=IDS)
def test_twin_matches_library_layer(oracle, case, names):
    """Our own framework's twin against that framework's library layer, float32."""
    from conformance.backends.build import build
    framework = "tf" if oracle.__name__.startswith("keras") else "torch"  # transformers is torch
    _, cfg, w, inputs, _ = case_data(*case)
    ours = build(framework, cfg, w, dtype="float32")(**inputs)["output"]
    library, _ = run_oracle(oracle, case, names, "float32")
    result = compare(f"{framework} twin vs {oracle.__name__}", ours, library, TOLERANCES["float32"])
    assert result.passed, str(result)


def test_keras_float64_attention_scale_trap():
    """Keras MultiHeadAttention in float64, as shipped, applies 1/sqrt(Dh) rounded to float32.

    The error is exactly what a float32-rounded scale predicts: the reference computed with
    that rounded scale matches the shipped layer to float64 precision.
    """
    from conformance.backends.build import build
    _, cfg, w, inputs, reference = case_data("multi_head_attention", "no_mask")
    shipped = oracles.keras_multi_head_attention(cfg, w, inputs["x"], exact_scale=False)
    exact = oracles.keras_multi_head_attention(cfg, w, inputs["x"], exact_scale=True)
    tol = TOLERANCES["float64"]
    assert not compare("shipped", shipped, reference["output"], tol).passed  # the trap is real
    assert compare("exact", exact, reference["output"], tol).passed
    rounded = float(np.float32(cfg.scale))
    explained = build("numpy", cfg.replace(attention_scale=rounded), w, dtype="float64")
    result = compare("explained", shipped, explained(**inputs)["output"], tol)
    assert result.passed, str(result)


# ---------------------------------------------------------------------------- transformers' RMSNorm and rotary

RMS_TRANSFORMERS = [("rms_norm", "default"), ("rms_norm", "eps_1e-5"), ("rms_norm", "offset")]


@pytest.mark.parametrize("case", RMS_TRANSFORMERS, ids=[f"{n}[{v}]" for n, v in RMS_TRANSFORMERS])
def test_transformers_rms_norm_matches_reference_in_float32(case):
    """`LlamaRMSNorm` (offset 0) and `GemmaRMSNorm` (1 + weight) against the float64 reference, float32 row."""
    _, cfg, w, inputs, reference = case_data(*case)
    result = compare(f"transformers RMSNorm {case}", oracles.transformers_rms_norm(cfg, w, inputs["x"], "float32"),
                     reference["output"], TOLERANCES["float32"])
    assert result.passed, str(result)


def test_transformers_rms_norm_computes_in_float32_whatever_the_dtype():
    """A named difference, not an error: `LlamaRMSNorm` and `GemmaRMSNorm` cast x to float32 before the
    statistic, so in a float64 model they downcast. Their float64 output misses the float64 reference by
    float32 rounding (outside the float64 row, inside 1e-6 relative), and the cause shows exactly:
    Llama's normalized x (weight 1) is made of float32 numbers, and Gemma's float64 layer returns its
    float32 layer's output bit for bit (it also scales in float32)."""
    for variant in ("default", "offset"):
        _, cfg, w, inputs, reference = case_data("rms_norm", variant)
        x, ref = inputs["x"], reference["output"]
        hf = oracles.transformers_rms_norm(cfg, w, x, "float64")
        error = np.abs(hf - ref).max() / np.abs(ref).max()
        assert 1e-10 < error < 1e-6, (variant, error)
    _, cfg, w, inputs, _ = case_data("rms_norm", "default")
    normalized = oracles.transformers_rms_norm(cfg, {"gamma": np.ones_like(w["gamma"])}, inputs["x"], "float64")
    assert np.array_equal(normalized.astype(np.float32).astype(np.float64), normalized)
    _, cfg, w, inputs, _ = case_data("rms_norm", "offset")
    as_float64 = oracles.transformers_rms_norm(cfg, w, inputs["x"], "float64")
    np.testing.assert_array_equal(as_float64, oracles.transformers_rms_norm(cfg, w, inputs["x"], "float32"))


def test_rms_norm_cast_order_in_bfloat16_is_the_libraries():
    """`rms_norm_upcast` is a real divergence in bfloat16: torch_impl's "statistic" is `LlamaRMSNorm`'s
    cast order and "all" with offset 1 is `GemmaRMSNorm`'s, element for element (but for the last-bit
    rounding of x / sqrt(ms) against Hugging Face's x * rsqrt(ms), a few elements in 10^5), while
    the other order differs in a quarter of the elements."""
    import torch
    from conformance.core.config import Config
    from torch_impl.normalization import RMSNorm
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    g = torch.Generator().manual_seed(0)
    D = 256
    x = (3 * torch.randn(16, 37, D, generator=g)).to(torch.bfloat16)
    gamma = (0.5 * torch.randn(D, generator=g) + 1).to(torch.bfloat16)
    differing = {}
    for offset, library in ((0.0, LlamaRMSNorm), (1.0, GemmaRMSNorm)):
        theirs = library(D, eps=1e-6).to(torch.bfloat16)
        with torch.no_grad():
            theirs.weight.copy_(gamma)
            for upcast in ("statistic", "all", "none"):
                ours = RMSNorm(Config(kind="rms_norm", d_model=D, layer_norm_eps=1e-6, rms_norm_offset=offset,
                                      rms_norm_upcast=upcast)).to(torch.bfloat16)
                ours.gamma.copy_(gamma)
                differing[library.__name__, upcast] = float((ours(x) != theirs(x)).float().mean())
    assert differing["LlamaRMSNorm", "statistic"] < 1e-4 and differing["GemmaRMSNorm", "all"] < 1e-4, differing
    assert differing["LlamaRMSNorm", "all"] > 0.1 and differing["GemmaRMSNorm", "statistic"] > 0.1, differing
    assert differing["LlamaRMSNorm", "none"] > 0.1 and differing["GemmaRMSNorm", "none"] > 0.1, differing


ROTARY = [("rotary_embedding", v) for v in registry.get("rotary_embedding").variants]


@pytest.mark.parametrize("case", ROTARY, ids=[f"{n}[{v}]" for n, v in ROTARY])
def test_transformers_rotary_matches_reference_in_float32(case):
    """transformers' own rotary (Llama's for every rope type, GPT-J's for the interleaved pairing, Phi's for
    partial rotation; `oracles.transformers_rotary`) on the registry's q, k and positions, float32 row."""
    _, cfg, _, inputs, reference = case_data(*case)
    out = oracles.transformers_rotary(cfg, inputs["q"], inputs["k"], inputs["position_ids"], "float32")
    for key in ("q", "k"):
        result = compare(f"transformers rotary {case} {key}", out[key], reference[key], TOLERANCES["float32"])
        assert result.passed, str(result)


@pytest.mark.parametrize("case", [("rotary_embedding", "default"), ("rotary_embedding", "interleaved")],
                         ids=["half", "interleaved"])
def test_transformers_rotary_tables_are_float32_in_a_float64_model(case):
    """A named difference: transformers builds cos and sin in float32 whatever the model's dtype (Llama takes
    cos of the float32 angle in float32, GPT-J keeps a float32 table), so in float64 it is 1e-8 .. 1e-6 off
    the reference, which takes cos in float64. Run in float64 with transformers' own float32 tables, the
    reference's rotation is transformers' to float64 precision: the tables are the whole difference."""
    import torch
    from numpy_ref.rotary import apply_rotary
    _, cfg, _, inputs, reference = case_data(*case)
    q, k, positions = inputs["q"], inputs["k"], inputs["position_ids"]
    hf = oracles.transformers_rotary(cfg, q, k, positions, "float64")
    error = max(np.abs(hf[n] - reference[n]).max() for n in ("q", "k"))
    assert 1e-9 < error < 1e-6, error
    if cfg.rotary_pairing == "half":
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
        config = LlamaConfig(hidden_size=cfg.d_model, num_attention_heads=cfg.num_heads, head_dim=cfg.head_dim,
                             max_position_embeddings=cfg.max_positions, rope_parameters=rope_parameters(cfg))
        cos, sin = (t.numpy() for t in LlamaRotaryEmbedding(config)(torch.zeros(1, dtype=torch.float64),
                                                                     torch.from_numpy(positions)))
    else:
        from transformers import GPTJConfig
        from transformers.models.gptj.modeling_gptj import GPTJRotaryEmbedding
        rope = GPTJRotaryEmbedding(GPTJConfig(n_embd=cfg.d_model, n_head=cfg.num_heads, rotary_dim=cfg.head_dim,
                                              n_positions=cfg.max_positions))
        sin, cos = (np.repeat(t.numpy(), 2, axis=-1) for t in rope(torch.zeros(1, dtype=torch.float64),
                                                                   torch.from_numpy(positions)))
    for n, x in (("q", q), ("k", k)):
        np.testing.assert_allclose(apply_rotary(x, cos, sin, cfg), hf[n], rtol=0, atol=1e-14)


def rotary_grid():
    """Head widths, bases and every rope type at the sizes released models use."""
    from conformance.core.config import Config
    out = []
    for Dh in (64, 80, 128, 256):
        for theta in (1e4, 5e5, 1e6, 37000.0):
            base = dict(kind="rotary_embedding", d_model=4 * Dh, num_heads=4, rope_theta=theta)
            out += [Config(**base, max_positions=8192),
                    Config(**base, max_positions=8192, rope_scaling="linear", rope_factor=3.0),
                    Config(**base, max_positions=131072, rope_scaling="llama3", rope_factor=8.0,
                           rope_original_max_positions=8192),
                    Config(**base, max_positions=131072, rope_scaling="llama3", rope_factor=32.0,
                           rope_original_max_positions=8192, rope_low_freq_factor=2.0),
                    Config(**base, max_positions=131072, rope_scaling="yarn", rope_factor=4.0,
                           rope_original_max_positions=32768),
                    Config(**base, max_positions=131072, rope_scaling="yarn", rope_factor=40.0,
                           rope_original_max_positions=4096, rope_truncate=False, rope_beta_fast=16.0),
                    Config(**base, max_positions=131072, rope_scaling="yarn", rope_factor=8.0,
                           rope_original_max_positions=8192, rope_attention_factor=1.5),
                    Config(**base, max_positions=2000, rope_scaling="dynamic", rope_factor=3.0)]
    return out


def test_rotary_frequencies_are_transformers_bit_for_bit():
    """`rotary_frequencies` in float32 (`rotary_float32`) against transformers' `rope_init_fn` of every type,
    and `dynamic` after it grew to a 5001-token sequence: the attention factors equal, and the inverse
    frequencies equal bit for bit but for 0.5% of 8448 entries, by at most 2 float32 ulps: where torch's float32
    pow rounds differently from a correctly rounded one (ours: float64, rounded once)."""
    import torch
    import transformers
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    from numpy_ref.rotary import rotary_frequencies
    transformers.logging.set_verbosity_error()
    entries = differing = worst = 0
    for cfg in rotary_grid():
        rope = LlamaRotaryEmbedding(LlamaConfig(hidden_size=cfg.d_model, num_attention_heads=cfg.num_heads,
                                                head_dim=cfg.head_dim, max_position_embeddings=cfg.max_positions,
                                                rope_parameters=rope_parameters(cfg)))
        seq_len = 5001 if cfg.rope_scaling == "dynamic" else 1
        rope(torch.zeros(1), torch.arange(seq_len)[None])  # dynamic grows here; the others ignore it
        ours, attention = rotary_frequencies(cfg, np.int64(seq_len))
        assert ours.dtype == np.float32 and attention == pytest.approx(rope.attention_scaling, rel=1e-15), cfg
        ulps = np.abs(ours.view(np.int32).astype(np.int64) - rope.inv_freq.numpy().view(np.int32).astype(np.int64))
        entries, differing, worst = entries + ulps.size, differing + int((ulps > 0).sum()), max(worst, ulps.max())
    assert entries > 8000 and differing < 0.01 * entries and worst <= 2, (entries, differing, worst)


@pytest.mark.parametrize("model", ["llama2", "llama3", "llama3.1"])
def test_rotary_float32_reproduces_transformers_at_long_positions(model):
    """Why `rotary_float32`: at position 131071 transformers' float32 angle is 3e-3 off the float64 one.
    The reference rounding where transformers rounds agrees with its cos to 1e-7 at positions 100, 8191
    and 131071; with float64 angles it is 3e-3 off at the last (llama head: Dh 128)."""
    import torch
    import transformers
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    from conformance.core.config import Config
    from numpy_ref.rotary import rotary_angles, rotary_frequencies
    transformers.logging.set_verbosity_error()
    fields = {"llama2": dict(rope_theta=1e4), "llama3": dict(rope_theta=5e5),
              "llama3.1": dict(rope_theta=5e5, rope_scaling="llama3", rope_factor=8.0,
                               rope_original_max_positions=8192)}[model]
    positions = np.array([[100, 8191, 131071]])
    errors = {}
    for float32 in (True, False):
        cfg = Config(kind="rotary_embedding", d_model=4096, num_heads=32, max_positions=131072,
                     rotary_float32=float32, **fields)
        rope = LlamaRotaryEmbedding(LlamaConfig(hidden_size=4096, num_attention_heads=32, head_dim=128,
                                                max_position_embeddings=131072,
                                                rope_parameters=rope_parameters(cfg)))
        cos, _ = rope(torch.zeros(1), torch.from_numpy(positions))
        inv_freq, attention = rotary_frequencies(cfg, np.int64(131072))
        ours = np.cos(rotary_angles(positions, inv_freq, cfg).astype(np.float64)) * attention
        errors[float32] = np.abs(ours - cos.double().numpy())[0].max(axis=-1)           # per position
    assert (errors[True] < 1e-7).all(), errors
    assert errors[False][-1] > 1e-3 and errors[False][0] < 1e-5, errors
