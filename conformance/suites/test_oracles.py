"""The libraries' own layers agree with the float64 reference, given the same weights.

Each oracle is checked against the reference in float64 and float32 with the same
tolerance table as the mirrors. A twin that matches the reference therefore matches
`torch.nn` and `keras.layers` too; the last test holds the twins against the library
layers directly.
"""
import numpy as np
import pytest

from conformance.oracles import layers as oracles
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
    framework = "torch" if oracle.__name__.startswith("torch") else "tf"
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
