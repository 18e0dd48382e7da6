"""What is particular to the Vision Transformer (the generic suites test every ViT case already):
the patch embedding as the strided convolution it is, the bicubic resizers of torch and TensorFlow
measured against each other and against `numpy_ref.vit.bicubic_matrix`, the published parameter
counts, keras-hub's ViTBackbone's differences, each with its cause, and (`--full`) vit-base-patch16-224
against transformers.
"""
from functools import lru_cache

import keras_hub  # noqa: F401  (a test dependency: a missing one is a failure)
import numpy as np
import pytest
import tensorflow as tf
import torch
import torch.nn.functional as F
from keras import ops

from conformance import weights
from conformance.backends.build import build
from conformance.compare.tolerance import TOLERANCES, compare, compare_outputs
from conformance.costs import params
from conformance.oracles import keras_hub as kho
from conformance.oracles import transformers as hf
from conformance.spec import families, presets, registry
from conformance.spec.leaves import TORCH_CONV
from numpy_ref import vit as ref_vit
from tf_impl import vit as tf_vit
from torch_impl import vit as torch_vit


def failures(results):
    return "\n".join(str(r) for r in results if not r.passed)


def max_abs(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# ------------------------------------------------------------------------------- the patch embedding

def test_patch_embedding_is_a_strided_convolution():
    """patches @ kernel is the stride-P convolution of torch's Conv2d (its kernel in torch's own
    (D, C, P, P) layout, through the leaf layout) and of keras.ops.conv (Keras's (P, P, C, D), ours)."""
    entry = registry.get("patch_embedding")
    cfg = entry.config()
    w = weights.initialize(cfg, seed=1, std=0.5)
    x = entry.inputs(cfg)["pixel_values"]                                      # (B, C, H, W)
    ours = build("numpy", cfg, w, dtype="float64")(pixel_values=x)["output"]   # (B, N, D)
    kernel = TORCH_CONV[0].to_external(w["kernel"]).astype(np.float64)         # (D, C, P, P)
    assert kernel.shape == (cfg.d_model, cfg.num_channels, cfg.patch_size, cfg.patch_size)
    conv = F.conv2d(torch.from_numpy(x), torch.from_numpy(kernel), torch.from_numpy(w["bias"].astype(np.float64)),
                    stride=cfg.patch_size)                                      # (B, D, h, w)
    assert max_abs(conv.flatten(2).transpose(1, 2).numpy(), ours) < 1e-12
    keras_conv = ops.conv(np.transpose(x, (0, 2, 3, 1)), w["kernel"].astype(np.float64), strides=cfg.patch_size)
    assert max_abs(ops.reshape(keras_conv + w["bias"], ours.shape), ours) < 1e-12


def test_patches_are_cut_row_major_in_row_column_channel_order():
    """Patch k is grid cell (k // w, k % w); inside it the values run over rows, then columns, then
    channels: pixel (i, j) of channel c at i P C + j C + c."""
    from numpy_ref.patch_embedding import patchify
    images = np.arange(2 * 4 * 6 * 3).reshape(2, 4, 6, 3)                     # (B, H, W, C), P = 2: 2 x 3 grid
    patches = patchify(images, 2)                                              # (B, 6, 12)
    assert patches.shape == (2, 6, 12)
    b, k, i, j, c = 1, 4, 1, 0, 2                                              # patch 4 = grid cell (1, 1)
    assert patches[b, k, i * 2 * 3 + j * 3 + c] == images[b, 2 * 1 + i, 2 * 1 + j, c]


# ------------------------------------------------------------------------------- bicubic

@lru_cache(maxsize=None)
def grid_and_resizes():
    """A 14 x 14 grid of 8 channels, N(0, 1), resized to 16 x 16 by torch and by TensorFlow."""
    x = np.random.default_rng(0).standard_normal((1, 8, 14, 14))              # (B, C, n, n)
    by_torch = F.interpolate(torch.from_numpy(x), size=(16, 16), mode="bicubic", align_corners=False).numpy()
    by_tf = tf.image.resize(np.transpose(x, (0, 2, 3, 1)), (16, 16), method="bicubic").numpy()
    return x, by_torch, np.transpose(by_tf, (0, 3, 1, 2))


def ours(x, h, w, a, edges):
    """numpy_ref's separable resize of x (B, C, n, m) to (B, C, h, w)."""
    grid = np.transpose(x[0], (1, 2, 0))                                       # (n, m, C)
    return np.transpose(ref_vit.bicubic_resize(grid, h, w, a, edges), (2, 0, 1))[None]


@pytest.mark.parametrize("size", [(16, 16), (24, 20), (7, 9), (14, 14)])
def test_reference_bicubic_is_torch_interpolate(size):
    """a = -0.75 with clamped edges is torch's `interpolate(mode="bicubic", align_corners=False)` (what
    transformers' interpolate_pos_encoding calls), up and down, to float64 round-off."""
    x = grid_and_resizes()[0]
    by_torch = F.interpolate(torch.from_numpy(x), size=size, mode="bicubic", align_corners=False).numpy()
    assert max_abs(ours(x, *size, -0.75, "clamp"), by_torch) < 1e-13


def test_torch_and_tensorflow_bicubic_differ_by_their_coefficient_and_edges():
    """Measured on the 14 -> 16 grid: torch and TensorFlow differ by 0.256. With a = -0.5 and dropped,
    renormalized edge taps the reference reproduces tf.image.resize (to its float32 output); the
    coefficient alone moves every sample (0.256 on the interior too), the edge rule alone only the
    two outermost rows and columns (0.070 there). keras.ops.image.resize on TensorFlow is
    tf.image.resize, so a Keras model resizing with it would be 0.256 away from transformers."""
    x, by_torch, by_tf = grid_and_resizes()
    gap = max_abs(by_torch, by_tf)
    assert 0.25 < gap < 0.26, gap
    assert max_abs(ours(x, 16, 16, -0.5, "drop"), by_tf) < 1e-6             # TensorFlow's float32
    coefficient = np.abs(ours(x, 16, 16, -0.5, "clamp") - by_torch)
    assert 0.25 < coefficient[..., 2:-2, 2:-2].max() < 0.26
    edges = np.abs(ours(x, 16, 16, -0.5, "clamp") - by_tf)
    assert edges[..., 2:-2, 2:-2].max() < 1e-6 and 0.06 < edges.max() < 0.08, edges.max()
    keras_tf = ops.image.resize(np.transpose(x, (0, 2, 3, 1)), (16, 16), interpolation="bicubic")
    assert max_abs(np.transpose(ops.convert_to_numpy(keras_tf), (0, 3, 1, 2)), by_tf) < 1e-6


@pytest.mark.parametrize("a, edges", [(-0.75, "clamp"), (-0.5, "drop")])
@pytest.mark.parametrize("sizes", [(14, 16), (5, 3), (4, 4)])
def test_the_twins_resize_matrices_are_the_reference_s(a, edges, sizes):
    expected = ref_vit.bicubic_matrix(*sizes, a, edges)                       # (n_out, n_in)
    assert np.allclose(expected.sum(axis=1), 1.0)                             # every row a weighted mean
    assert max_abs(torch_vit.bicubic_matrix(*sizes, a, edges).numpy(), expected) < 1e-15
    assert max_abs(ops.convert_to_numpy(tf_vit.bicubic_matrix(*sizes, a, edges)), expected) < 1e-15


def test_the_same_grid_is_not_changed():
    """Resizing n x n to n x n: every weight but the centre tap's is 0, exactly (W(0) = 1, W(1) = W(2) = 0)."""
    np.testing.assert_array_equal(ref_vit.bicubic_matrix(14, 14), np.eye(14))


# ------------------------------------------------------------------------------- parameter counts

PUBLISHED = {  # (ViTModel with its pooler, ViTForImageClassification with 1000 classes): transformers' counts
    "vit-tiny-patch16-224": (5_561_472, 5_717_416),
    "vit-base-patch16-224": (86_389_248, 86_567_656),
    "vit-large-patch16-224": (304_351_232, 304_326_632),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_presets_count_as_transformers(name):
    cfg = presets.get(name)
    for c, expected in zip((cfg, cfg.replace(head="classification")), PUBLISHED[name]):
        assert params.count(c)["total"] == expected
        assert params.transformers_count(c)["total"] == expected, params.transformers_count(c)
    no_pooler = cfg.replace(pooler=False)  # DINO's ViTModel: add_pooling_layer=False
    assert params.count(no_pooler)["total"] == params.transformers_count(no_pooler)["total"] \
        == PUBLISHED[name][0] - cfg.d_model * (cfg.d_model + 1)


def test_training_memory_of_an_interpolating_vit_is_what_autograd_saves():
    """tests/test_costs.py holds the declared saved bytes to torch's autograd for the default ViT; with
    interpolation the two resize matrices are kept too (the position table's gradient needs them)."""
    from conformance.costs import memory
    cfg = registry.get("vit").config("interpolate")
    model = build("torch", cfg, weights.initialize(cfg))
    measured = model.backend.training_memory(model, families.get("vit").inputs(cfg, 2, 0))
    assert measured["saved_for_backward"] == memory.activations(cfg, 2, 0)["training"]["none"]


# ------------------------------------------------------------------------------- keras-hub

@lru_cache(maxsize=None)
def keras_hub_case():
    """keras-hub's ViTBackbone's config (no pooler), weights std 0.2, images whose values float32 holds
    exactly: keras-hub's input is a float32 keras.Input even in a float64 model."""
    cfg = registry.get("vit").config("no_pooler")
    w = weights.initialize(cfg, seed=0, std=0.2)
    x = registry.get("vit").inputs(cfg, "no_pooler", batch=3)
    x = {k: v.astype(np.float32).astype(np.float64) for k, v in x.items()}
    return cfg, w, x, build("numpy", cfg, w, dtype="float64")(**x)


def keras_hub_float64(cfg, w, x, exact):
    model = kho.load(kho.backbone(cfg, "float64"), cfg, w)
    return kho.run(kho.exact_constants(model) if exact else model, cfg, **x)


def test_keras_hub_vit_in_float64_rounds_two_constants_to_float32():
    """As built, float64 keras-hub is ~1e-8 away (past the float64 row): its attention scale and its
    GELU's 1/sqrt(2) pass through float32 constants (`kho.exact_constants`); with both exact it is the
    float64 reference."""
    cfg, w, x, reference = keras_hub_case()
    shipped = compare_outputs("keras-hub float64 as built", keras_hub_float64(cfg, w, x, False), reference, "float64")
    assert failures(shipped) and 1e-10 < max(r.max_abs for r in shipped) < 1e-6, shipped
    exact = compare_outputs("keras-hub float64, exact constants", keras_hub_float64(cfg, w, x, True), reference,
                            "float64")
    assert not failures(exact), failures(exact)


def test_keras_hub_converter_epsilon_is_its_default_not_transformers():
    """keras-hub's Hugging Face converter (convert_vit.py) passes no layer_norm_epsilon: a converted ViT
    keeps ViTBackbone's 1e-6, where transformers' is 1e-12. Measured in float64 with exact constants it is
    a real difference (2.4e-5 here: past the float64 row, under float32's), and the reference rebuilt with
    1e-6 is keras-hub again."""
    cfg, w, x, reference = keras_hub_case()
    converted = keras_hub_float64(cfg.replace(layer_norm_eps=1e-6), w, x, True)
    gap = compare_outputs("keras-hub eps 1e-6 vs reference eps 1e-12", converted, reference, "float64")
    assert failures(gap) and 1e-8 < max(r.max_abs for r in gap) < TOLERANCES["float32"].atol, gap
    rebuilt = build("numpy", cfg.replace(layer_norm_eps=1e-6), w, dtype="float64")(**x)
    assert not failures(compare_outputs("keras-hub eps 1e-6 vs reference eps 1e-6", converted, rebuilt, "float64"))


def test_keras_hub_has_one_bias_switch_for_all_four_projections():
    """ViTBackbone's use_mha_bias drops the output projection's bias with q, k and v's, and its converter
    passes qkv_bias there: a transformers ViT with qkv_bias=false (which keeps o_proj's bias) cannot be
    expressed, and the keras-hub table refuses it by name."""
    cfg = registry.get("vit").config("no_qkv_bias").replace(pooler=False)
    assert "use_bias=True" in kho.refusal(cfg)
    dims = {**families.get("vit").keras_hub[0].dims(cfg), "use_mha_bias": False}
    paths = [v.path for v in keras_hub.models.ViTBackbone(**dims).weights]
    assert not any(p.endswith("attention_output/bias") for p in paths)


@pytest.mark.parametrize("overrides, field", [({"pooler": True}, "pooler"), ({"head": "classification"}, "head"),
                                              ({"interpolate_pos_encoding": True}, "interpolate_pos_encoding")])
def test_keras_hub_refuses_what_vit_backbone_has_no_part_for(overrides, field):
    cfg = registry.get("vit").config("no_pooler").replace(**overrides)
    assert f"Config.{field}=" in kho.refusal(cfg)


# ------------------------------------------------------------------------------- --full: ViT-Base/16

@pytest.mark.full
def test_vit_base_against_transformers(framework):
    """vit-base-patch16-224 at its size (std 0.02 weights, 2 images): every framework in float32 against
    transformers' ViTModel in float32, every hidden state and the outputs, and its own parameter count."""
    cfg = presets.get("vit-base-patch16-224")
    w = weights.initialize(cfg, seed=0)
    x = families.get("vit").inputs(cfg, batch=2, length=0)
    expected = hf.run(cfg, w, x, "eager", "float32")
    states = hf.hidden_states(cfg, w, x, "eager", "float32")["hidden_states"]
    m = build(framework, cfg, w, dtype="float32")
    assert m.num_parameters() == 86_389_248
    out, records = m.trace(**x)
    names = ["embeddings.output"] + [f"layers.{i}.output" for i in range(cfg.num_layers)]
    results = [compare(f"{framework} {name}", records[name], states[k], TOLERANCES["float32"])
               for k, name in enumerate(names)]
    assert len(states) == len(names)
    results += compare_outputs(f"{framework} vit-base", out, {k: expected[k] for k in out}, "float32")
    assert not failures(results), failures(results)
