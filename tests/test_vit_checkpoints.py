"""ViT's checkpoints: transformers' own files in, ours out the way transformers writes them.

conformance/suites/test_transformers_families.py proves our weights written with `to_hf` run in
transformers. Here the files come from transformers itself (`save_pretrained` of a ViTModel or a
ViTForImageClassification it built from a config): every numerics-changing config.json field is set
to a value that is not its default, one row at a time, and `from_hf` must give a model with
transformers' outputs. A field read wrongly or not at all changes the outputs and fails.
"""
import json

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from conformance import weights
from conformance.backends.build import build
from conformance.compare.tolerance import TOLERANCES, compare

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, image_size=16,
             patch_size=4, num_channels=3)
# (class, config.json values that are not transformers' defaults, ViTModel's add_pooling_layer)
FIELDS = [
    ("ViTModel", {}, True),
    ("ViTModel", {}, False),  # DINO's checkpoints: no pooler tensors
    ("ViTModel", {"layer_norm_eps": 0.3}, True),
    ("ViTModel", {"hidden_act": "gelu_new"}, True),
    ("ViTModel", {"qkv_bias": False}, True),
    ("ViTModel", {"image_size": 24, "patch_size": 6}, True),
    ("ViTModel", {"image_size": [16, 16], "patch_size": [2, 2]}, True),
    ("ViTModel", {"num_channels": 1}, True),
    ("ViTModel", {"head_dim": 12}, True),
    ("ViTModel", {"hidden_size": 48, "num_attention_heads": 3, "intermediate_size": 20, "num_hidden_layers": 3}, True),
    ("ViTForImageClassification", {}, None),
    ("ViTForImageClassification", {"num_labels": 5, "layer_norm_eps": 1e-6}, None),
]


def save_hf(cls, path, pooler=None, **overrides):
    torch.manual_seed(0)
    config = transformers.ViTConfig(**{**SMALL, **overrides})
    model = getattr(transformers, cls)(config, **({} if pooler is None else {"add_pooling_layer": pooler}))
    with torch.no_grad():  # transformers draws std 0.02 and unit norms: too gentle to show a wrong field
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "layernorm" in name and name.endswith("weight") else 0.0))
    model.save_pretrained(path)
    return model.eval()


def pixels(model, batch=2):
    c = model.config
    size = c.image_size if isinstance(c.image_size, int) else c.image_size[0]
    return np.random.default_rng(0).standard_normal((batch, c.num_channels, size, size))


def hf_outputs(model, x):
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(x).float())
    named = {"last_hidden_state": "last_hidden_state", "pooler_output": "pooled_output", "logits": "logits"}
    return {ours: getattr(out, k).double().numpy() for k, ours in named.items() if getattr(out, k, None) is not None}


@pytest.mark.parametrize("cls,overrides,pooler", FIELDS,
                         ids=[f"{c}-{'-'.join(o) or 'defaults'}{'' if p is not False else '-no_pooler'}"
                              for c, o, p in FIELDS])
def test_transformers_files_import_with_every_numerics_field(cls, overrides, pooler, tmp_path):
    model = save_hf(cls, tmp_path, pooler, **overrides)
    cfg, w = weights.from_hf(tmp_path)
    assert cfg.pooler is (pooler is not False)
    x = pixels(model)
    expected = hf_outputs(model, x)
    for framework in ("numpy", "torch", "tf"):
        ours = build(framework, cfg, w, dtype="float32")(pixel_values=x)
        assert set(expected) <= set(ours) and ("pooled_output" in ours) == ("pooled_output" in expected)
        for key in expected:
            result = compare(f"{framework} from_hf({cls} {overrides}).{key}", ours[key], expected[key],
                             TOLERANCES["float32"])
            assert result.passed, str(result)


def test_a_field_read_wrongly_changes_the_outputs(tmp_path):
    """The test above can fail: the same file with layer_norm_eps, qkv_bias or the activation read
    wrongly (or the patch kernel not transposed) is far off."""
    model = save_hf("ViTModel", tmp_path, True, layer_norm_eps=0.3)
    cfg, w = weights.from_hf(tmp_path)
    x = pixels(model)
    expected = hf_outputs(model, x)["last_hidden_state"]
    kernel = w["embeddings.patch.kernel"]
    wrongs = [(cfg.replace(layer_norm_eps=1e-12), w), (cfg.replace(activation="gelu_tanh"), w),
              (cfg, {**w, "embeddings.patch.kernel": kernel.transpose(1, 0, 2, 3)})]  # rows and columns swapped
    for wrong_cfg, wrong_w in wrongs:
        ours = build("numpy", wrong_cfg, wrong_w, dtype="float32")(pixel_values=x)["last_hidden_state"]
        assert not compare("wrong", ours, expected, TOLERANCES["float32"]).passed


@pytest.mark.parametrize("cls,pooler", [("ViTModel", True), ("ViTModel", False), ("ViTForImageClassification", None)])
def test_to_hf_writes_transformers_own_names_and_bytes(cls, pooler, tmp_path):
    """from_hf then to_hf gives back transformers' file: the same tensor names (the hub's, as its
    save_pretrained writes them), the same bytes, and a config.json it loads with no missing or
    unexpected weights."""
    save_hf(cls, tmp_path / "theirs", pooler)
    cfg, w = weights.from_hf(tmp_path / "theirs")
    weights.to_hf(cfg, w, tmp_path / "ours")
    theirs, ours = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("theirs", "ours"))
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    _, info = getattr(transformers, cls).from_pretrained(tmp_path / "ours", output_loading_info=True,
                                                         **({} if pooler is None else {"add_pooling_layer": pooler}))
    assert not any(info.values()), info


@pytest.mark.parametrize("key,value,message", [
    ("pooler_act", "relu", r"config.json pooler_act must be 'tanh' to import as ViTModel; received 'relu'"),
    ("pooler_output_size", 16, r"pooler_output_size must be hidden_size=32 \(a square pooler\); received "
                               r"pooler_output_size=16"),
    ("image_size", [16, 12], r"image_size must be an int or a square \[n, n\] pair; received image_size=\[16, 12\]"),
    ("hidden_act", "quick_gelu", r"hidden_act must be one of .*received hidden_act='quick_gelu'"),
    ("patch_size", 5, r"patch_size must divide image_size .*received image_size=16, patch_size=5"),
])
def test_unsupported_values_are_named(key, value, message, tmp_path):
    save_hf("ViTModel", tmp_path, True)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(ValueError, match=message):
        weights.from_hf(tmp_path)


def test_a_classification_file_read_as_head_none_is_the_backbone_without_a_pooler(tmp_path):
    """The pooler is read off the file (config.json does not say): a ViTForImageClassification file read
    as head="none" has none, and the classifier it leaves out is named."""
    save_hf("ViTForImageClassification", tmp_path)
    with pytest.warns(UserWarning, match=r"2 tensors of other heads are not used by head='none': classifier.bias, "
                                         r"classifier.weight"):
        cfg, w = weights.from_hf(tmp_path, head="none")
    assert (cfg.head, cfg.pooler) == ("none", False) and not any(k.startswith("pooler") for k in w)
