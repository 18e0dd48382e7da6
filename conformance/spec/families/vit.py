"""The Vision Transformer (Dosovitskiy et al. 2020): ViT-Base/16 and ViT-Large/16 at 224 as released
(google/vit-base-patch16-224, google/vit-large-patch16-224) and ViT-Tiny/16 (Touvron et al. 2021's
DeiT-Ti dimensions, facebook/deit-tiny-patch16-224, a plain "vit" checkpoint). Counts equal
transformers' `num_parameters()`: ViTModel (with its pooler) and ViTForImageClassification (1000
ImageNet classes, no pooler). One Hugging Face layout, and keras-hub's ViTBackbone.
"""
from __future__ import annotations

from conformance.core.config import Config
from conformance.spec.entry import Entry, Variant as V
from conformance.spec.family import Checkpoint, Family, KerasHub, Step, Walkthrough
from conformance.spec.inputs import image_inputs
from conformance.spec.leaves import (KERAS_CONV, KERAS_DENSE, KERAS_HEADS_IN, KERAS_HEADS_OUT, KERAS_NORM,
                                     TORCH_CONV, TORCH_LINEAR as LINEAR, TORCH_NORM as NORM, Leaf)

COMMON = dict(kind="vit", norm_first=True, causal=False, activation="gelu", layer_norm_eps=1e-12, dropout=0.0,
              num_channels=3, num_labels=1000)


def _vit(layers, width, heads, d_ff, image_size=224, patch_size=16):
    return Config(d_model=width, num_heads=heads, d_ff=d_ff, num_layers=layers, image_size=image_size,
                  patch_size=patch_size, **COMMON)


PRESETS = {
    "vit-tiny-patch16-224": _vit(12, 192, 3, 768),
    "vit-base-patch16-224": _vit(12, 768, 12, 3072),
    "vit-large-patch16-224": _vit(24, 1024, 16, 4096),
}

# 16 x 16 images of 4 x 4 patches: 16 patches and [CLS], 17 tokens
TINY = Config(d_model=32, num_heads=4, d_ff=64, num_layers=2, image_size=16, patch_size=4,
              **{**COMMON, "num_labels": 3})

# ------------------------------------------------------------------ Hugging Face (the hub's tensor names)

LAYER = "{base}encoder.layer.{i}"
POSITIONS = (Leaf("cls_token", "cls_token", "batch_of_one"),            # (1, D) <-> (1, 1, D)
             Leaf("positions", "position_embeddings", "batch_of_one"))  # (1 + N, D) <-> (1, 1 + N, D)


def _square(hf: dict, key: str, default: int) -> int:
    """image_size and patch_size: an int, or a [height, width] pair of one value (only square ones are here)."""
    value = hf.get(key)
    value = default if value is None else value
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"config.json {key} must be an int or a square [n, n] pair; received {key}={value!r}")
        value = value[0]
    return int(value)


def _read(hf: dict, cls: str) -> dict:
    D, H = hf.get("hidden_size", 768), hf.get("num_attention_heads", 12)
    if hf.get("pooler_output_size") not in (None, D):
        raise ValueError(f"config.json pooler_output_size must be hidden_size={D} (a square pooler); "
                         f"received pooler_output_size={hf['pooler_output_size']!r}")
    qkv_bias = hf.get("qkv_bias", True)
    return {"image_size": _square(hf, "image_size", 224), "patch_size": _square(hf, "patch_size", 16),
            "output_bias": None if qkv_bias else True,  # qkv_bias=false: no q, k, v biases; o_proj keeps its own
            "attention_head_dim": hf["head_dim"] if hf.get("head_dim") not in (None, D // H) else None}


def _write(cfg: Config, cls: str) -> dict:
    if not cfg.use_bias and cfg.output_bias is not True:
        raise ValueError(f"a Hugging Face ViT's attention output and feed-forward always have biases: Config.output_bias "
                         f"must be True when use_bias is False; received output_bias={cfg.output_bias!r}")
    if cls == "ViTForImageClassification":
        labels = {"id2label": {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)},
                  "label2id": {f"LABEL_{i}": i for i in range(cfg.num_labels)}}
    else:
        labels = {}
    head_dim = {"head_dim": cfg.attention_head_dim} if cfg.attention_head_dim else {}
    return {"attention_probs_dropout_prob": cfg.dropout, "pooler_output_size": cfg.d_model, **head_dim, **labels}


HF = Checkpoint(
    model_type="vit",
    classes={"ViTModel": "none", "ViTForImageClassification": "classification"},
    base_class="ViTModel", prefix="vit.",
    modules={
        "embeddings.patch": ("{base}embeddings.patch_embeddings.projection", TORCH_CONV),  # Conv2d (D, C, P, P)
        "embeddings": ("{base}embeddings", POSITIONS),
        "layers.{i}.attention_norm": (f"{LAYER}.layernorm_before", NORM),
        "layers.{i}.attention.query": (f"{LAYER}.attention.attention.query", LINEAR),
        "layers.{i}.attention.key": (f"{LAYER}.attention.attention.key", LINEAR),
        "layers.{i}.attention.value": (f"{LAYER}.attention.attention.value", LINEAR),
        "layers.{i}.attention.output": (f"{LAYER}.attention.output.dense", LINEAR),
        "layers.{i}.feed_forward_norm": (f"{LAYER}.layernorm_after", NORM),
        "layers.{i}.feed_forward.inner": (f"{LAYER}.intermediate.dense", LINEAR),
        "layers.{i}.feed_forward.outer": (f"{LAYER}.output.dense", LINEAR),
        "final_norm": ("{base}layernorm", NORM),
        "pooler": ("{base}pooler.dense", LINEAR),
        "classifier": ("classifier", LINEAR),
    },
    tied={}, buffers=(), foreign=(),
    fields={"d_model": ("hidden_size", 768), "num_heads": ("num_attention_heads", 12),
            "d_ff": ("intermediate_size", 3072), "num_layers": ("num_hidden_layers", 12),
            "layer_norm_eps": ("layer_norm_eps", 1e-12), "activation": ("hidden_act", "gelu"),
            "dropout": ("hidden_dropout_prob", 0.0), "image_size": ("image_size", 224),
            "patch_size": ("patch_size", 16), "num_channels": ("num_channels", 3), "use_bias": ("qkv_bias", True)},
    fixed={"pooler_act": "tanh"},
    constants={"kind": "vit", "norm_first": True, "causal": False, "position": "learned", "norm": "layer",
               "feed_forward": "standard", "scale_embeddings": False},
    read=_read, write=_write,
    init=lambda cfg, cls: {"add_pooling_layer": cfg.pooler} if cls == "ViTModel" else {},
    optional={"pooler": "pooler"},
    call={"interpolate_pos_encoding": "interpolate_pos_encoding"},
    hidden_states={"hidden_states": ("embeddings.output", "layers.{i}.output", None)},  # before the final norm
)

# ------------------------------------------------------------------------------ keras-hub

BLOCK = "vit_encoder/transformer_block_{i+1}"  # keras-hub counts its blocks from 1
KERAS_HUB = KerasHub(
    backbone="ViTBackbone",
    modules={
        "embeddings.patch": ("vit_patching_and_embedding/patch_embedding", KERAS_CONV),  # Conv2D (P, P, C, D)
        "embeddings": ("vit_patching_and_embedding", (Leaf("cls_token", "class_token", "batch_of_one"),
                                                      Leaf("positions", "position_embedding/embeddings"))),
        "layers.{i}.attention_norm": (f"{BLOCK}/ln_1", KERAS_NORM),
        "layers.{i}.attention.query": (f"{BLOCK}/mha/query", KERAS_HEADS_IN),
        "layers.{i}.attention.key": (f"{BLOCK}/mha/key", KERAS_HEADS_IN),
        "layers.{i}.attention.value": (f"{BLOCK}/mha/value", KERAS_HEADS_IN),
        "layers.{i}.attention.output": (f"{BLOCK}/mha/attention_output", KERAS_HEADS_OUT),
        "layers.{i}.feed_forward_norm": (f"{BLOCK}/ln_2", KERAS_NORM),
        "layers.{i}.feed_forward.inner": (f"{BLOCK}/mlp/dense_1", KERAS_DENSE),
        "layers.{i}.feed_forward.outer": (f"{BLOCK}/mlp/dense_2", KERAS_DENSE),
        "final_norm": ("vit_encoder/ln", KERAS_NORM),
    },
    numerics={},  # pre-norm, exact GELU, the epsilon it is given: in float32 its numbers are ours
    # ViTBackbone ends at its final norm (no pooler), takes the image size it was built for (no
    # interpolation), and one use_mha_bias for q, k, v and the output projection alike
    required={"head": "none", "pooler": False, "interpolate_pos_encoding": False, "use_bias": True,
              "output_bias": None, "attention_head_dim": None, "attention_impl": "reference"},
    dims=lambda cfg: dict(image_shape=(cfg.image_size, cfg.image_size, cfg.num_channels), patch_size=cfg.patch_size,
                          num_layers=cfg.num_layers, num_heads=cfg.num_heads, hidden_dim=cfg.d_model,
                          mlp_dim=cfg.d_ff, dropout_rate=cfg.dropout, attention_dropout=cfg.dropout,
                          layer_norm_epsilon=cfg.layer_norm_eps),
    inputs={"pixel_values": ("images", None)},
    outputs={"last_hidden_state": None},
    layouts={"pixel_values": (0, 2, 3, 1)},  # keras-hub's images are channels last (B, H, W, C)
)

# ------------------------------------------------------------------------------ walkthrough

IMAGE = [[[[0.0, 0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 0.7], [0.8, 0.9, 1.0, 1.1], [1.2, 1.3, 1.4, 1.5]],
          [[1.0, 0.9, 0.8, 0.7], [0.6, 0.5, 0.4, 0.3], [0.2, 0.1, 0.0, -0.1], [-0.2, -0.3, -0.4, -0.5]]]]
WALKTHROUGH = Walkthrough(
    "A one-layer ViT (D = 8, 2 heads) on a 2-channel 4 x 4 image cut into four 2 x 2 patches: 5 tokens with "
    "[CLS].",
    dict(d_model=8, num_heads=2, d_ff=16, num_layers=1, image_size=4, patch_size=2, num_channels=2),
    {"pixel_values": IMAGE},
    (Step("embeddings.patch.patches", "The image channels last, cut into 2 x 2 patches, each flattened in "
                                      "(row, column, channel) order: 4 patches of 2 2 2 = 8 values.",
          "transformers' ViTPatchEmbeddings is a Conv2d with kernel and stride 2: the same products."),
     Step("embeddings.patch.output", "Each patch times the (8, D) kernel, plus the bias: 4 tokens of width D."),
     Step("embeddings.output", "[CLS]'s learned row in front, then a learned position row added to each of the "
                               "5 tokens.", "transformers' hidden_states[0]."),
     Step("layers.0.attention_norm.output", "Pre-norm: the attention sees LN(h), the residual h."),
     Step("layers.0.attention.probs", "No mask: every token, [CLS] included, attends to all 5.",
          "transformers' eager ViT attention runs its softmax in float32 whatever the model's dtype."),
     Step("layers.0.output", "h + Attention(LN(h)), then h + FFN(LN(h)): the layer's output."),
     Step("final_norm.output", "The final layer norm: last_hidden_state."),
     Step("pooled", "ViTModel's pooler: tanh(h[:, 0] W + b) on [CLS]'s row (ViTForImageClassification has "
                    "none: its head reads h[:, 0] directly).")),
    shows=("num_layers", "num_heads", "head_dim", "d_ff", "image_size", "patch_size", "num_channels",
           "layer_norm_eps", "norm_first"),
    transformers_steps={"embeddings.output": ("hidden_states", 0), "layers.0.attention.probs": ("attentions", 0),
                        "final_norm.output": ("last_hidden_state", None), "pooled": ("pooler_output", None)},
    transformers_dtype="float32",
    transformers_why="its eager attention computes the softmax in float32, 1e-8 off float64's",
)

FAMILY = Family(
    entry=Entry("vit", "ViT", TINY, image_inputs,
                {"default": V(),
                 "classification": V({"head": "classification"}),
                 "no_pooler": V({"pooler": False}),  # DINO's ViTModel checkpoints; keras-hub's ViTBackbone
                 # a 22 x 13 image (`image_inputs`): the 4 x 4 position grid resized to 5 x 3 (rows up,
                 # columns down), and the 2 and 1 pixels past the last whole patches dropped
                 "interpolate": V({"interpolate_pos_encoding": True}),
                 "no_qkv_bias": V({"use_bias": False, "output_bias": True}),
                 "fused": V({"attention_impl": "fused"})},
                is_model=True),
    presets=PRESETS,
    checkpoints=(HF,), keras_hub=(KERAS_HUB,), walkthrough=WALKTHROUGH, base_preset="vit-base-patch16-224",
)
