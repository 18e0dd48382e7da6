"""The registry: every component and model declared once, with its three implementations.

An `Entry` names the class (the same name in `numpy_ref`, `torch_impl` and `tf_impl`),
how to construct it from a `Config`, a tiny config for tests, the variants worth
testing (config overrides plus input options) and an input maker. The conformance
suite is generated from this table: adding an entry tests it in every framework and
dtype with no new test code. Canonical parameter names and shapes come from the NumPy
reference's module tree (`param_shapes`), which declares them without allocating.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from conformance.core.config import Config

PACKAGES = {"numpy": "numpy_ref", "torch": "torch_impl", "tf": "tf_impl"}


@dataclass(frozen=True)
class Variant:
    overrides: dict = field(default_factory=dict)  # Config fields
    options: dict = field(default_factory=dict)    # passed to the input maker
    frameworks: tuple | None = None  # the frameworks this variant is about; None = all (precision.supported)


@dataclass(frozen=True)
class Entry:
    name: str
    cls: str
    tiny: Config
    make_inputs: Callable  # (cfg, rng, batch, length, **options) -> dict[str, np.ndarray]
    variants: dict[str, Variant]
    args: Callable[[Config], tuple] = lambda cfg: (cfg,)
    is_model: bool = False
    training: bool = False  # run in training mode (dropout driven by a supplied mask)
    float64_output: bool = False  # a constant computed in float64 whatever the dtype; callers cast
    differentiable: bool = True  # False: the output depends on no float input or weight (nothing has a gradient)
    dtypes: tuple | None = None  # the dtypes it runs in; None = every dtype its framework runs (precision.SUPPORT)

    def config(self, variant: str = "default") -> Config:
        return self.tiny.replace(**self.variants[variant].overrides)

    def inputs(self, cfg: Config, variant: str = "default", seed: int = 0, batch: int = 2,
               length: int = 7) -> dict:
        rng = np.random.default_rng(seed)
        return self.make_inputs(cfg, rng, batch, length, **self.variants[variant].options)

    def implementation(self, framework: str):
        return getattr(importlib.import_module(PACKAGES[framework]), self.cls)


# -------------------------------------------------------------------------------- inputs

def padding_mask(rng, batch, length):
    """(B, S) bool, True = attend; row b keeps its first length - b positions, at least 1."""
    keep = np.maximum(length - np.arange(batch), 1)
    return np.arange(length)[None, :] < keep[:, None]


def hidden(cfg, rng, batch, length, **_):
    return {"x": rng.standard_normal((batch, length, cfg.d_model))}


def masked_hidden(cfg, rng, batch, length, mask="padding", cross=False):
    source = length + 3 if cross else length
    inputs = {"x": rng.standard_normal((batch, length, cfg.d_model))}
    if cross:
        inputs["context"] = rng.standard_normal((batch, source, cfg.d_model))
    if mask == "padding":
        inputs["mask"] = padding_mask(rng, batch, source)
    return inputs


def scores_and_mask(cfg, rng, batch, length, mask="padding", fill=None):
    H = cfg.num_heads
    scores = 4 * rng.standard_normal((batch, H, length, length))
    masks = {
        "none": None,
        "padding": padding_mask(rng, batch, length)[:, None, None, :].repeat(length, 2),
        "causal": np.tril(np.ones((length, length), bool))[None, None].repeat(batch, 0),
        "fully_masked": rng.random((batch, 1, length, length)) < 0.5,
    }
    m = masks[mask]
    if mask == "fully_masked":
        m[0, 0, 1, :] = False  # one row with nothing to attend to: defined as zeros
    return {"scores": scores} if m is None else {"scores": scores, "mask": m}


def qkv(cfg, rng, batch, length, mask="padding"):
    H, Dh = cfg.num_heads, cfg.head_dim
    S = length + 2
    inputs = {"q": rng.standard_normal((batch, H, length, Dh)),
              "k": rng.standard_normal((batch, H, S, Dh)),
              "v": rng.standard_normal((batch, H, S, Dh))}
    if mask == "padding":
        inputs["mask"] = padding_mask(rng, batch, S)[:, None, None, :].repeat(length, 2)
    if mask == "fully_masked":
        inputs["mask"] = padding_mask(rng, batch, S)[:, None, None, :].repeat(length, 2)
        inputs["mask"][0, 0, 0, :] = False
    return inputs


def dropout_inputs(cfg, rng, batch, length, **_):
    x = rng.standard_normal((batch, length, cfg.d_model))
    return {"x": x, "keep": rng.random(x.shape) >= cfg.dropout}


def ids(vocab):
    def make(cfg, rng, batch, length, **_):
        return {"ids": rng.integers(0, getattr(cfg, vocab), (batch, length))}
    return make


def positions(key):
    def make(cfg, rng, batch, length, **_):
        return {key: np.arange(length)[None, :].repeat(batch, 0) + rng.integers(0, 3, (batch, 1))}
    return make


def decoder_inputs(cfg, rng, batch, length, **_):
    S = length + 2
    return {"x": rng.standard_normal((batch, length, cfg.d_model)),
            "memory": rng.standard_normal((batch, S, cfg.d_model)),
            "mask": padding_mask(rng, batch, length),
            "memory_mask": padding_mask(rng, batch, S)}


def token_inputs(cfg, rng, batch, length, segments=False, **_):
    inputs = {"input_ids": rng.integers(0, cfg.vocab_size, (batch, length)),
              "attention_mask": padding_mask(rng, batch, length).astype(np.int64)}
    if segments:
        inputs["token_type_ids"] = (np.arange(length)[None, :] >= length // 2).astype(np.int64).repeat(batch, 0)
    return inputs


def seq2seq_inputs(cfg, rng, batch, length, **_):
    target = max(length - 2, 1)
    return {"input_ids": rng.integers(0, cfg.vocab_size, (batch, length)),
            "decoder_input_ids": rng.integers(0, cfg.vocab_size, (batch, target)),
            "attention_mask": padding_mask(rng, batch, length).astype(np.int64),
            "decoder_attention_mask": padding_mask(rng, batch, target).astype(np.int64)}


# -------------------------------------------------------------------------------- entries

TINY = Config(kind="component", d_model=32, num_heads=4, d_ff=64, vocab_size=97, max_positions=64)
V = Variant
FUSED = ("torch",)  # Config.fused_attention changes torch_impl only; numpy_ref and tf_impl ignore it

ENTRIES: dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
    ENTRIES[entry.name] = entry
    return entry


register(Entry("linear", "Linear", TINY.replace(kind="linear"), hidden,
               {"default": V(), "no_bias": V({"use_bias": False})},
               args=lambda cfg: (cfg.d_model, cfg.d_ff, cfg.use_bias)))
register(Entry("softmax", "Softmax", TINY.replace(kind="softmax"), scores_and_mask,
               {"default": V(options={"mask": "none"}), "padding": V(), "causal": V(options={"mask": "causal"}),
                "fully_masked": V(options={"mask": "fully_masked"}),
                "fill_inf": V({"mask_fill": float("-inf")}, {"mask": "fully_masked"}),
                "fill_1e4": V({"mask_fill": -1e4})}))
register(Entry("activation", "Activation", TINY.replace(kind="activation"), hidden,
               {"default": V(), "gelu_tanh": V({"activation": "gelu_tanh"}), "relu": V({"activation": "relu"})}))
register(Entry("dropout", "Dropout", TINY.replace(kind="dropout", dropout=0.25), dropout_inputs,
               {"default": V()}, training=True))
register(Entry("layer_norm", "LayerNorm", TINY.replace(kind="layer_norm"), hidden,
               {"default": V(), "eps_1e-5": V({"layer_norm_eps": 1e-5}), "eps_1e-3": V({"layer_norm_eps": 1e-3})}))
register(Entry("token_embedding", "TokenEmbedding", TINY.replace(kind="token_embedding"), ids("vocab_size"),
               {"default": V()}))
register(Entry("position_embedding", "PositionEmbedding", TINY.replace(kind="position_embedding"),
               positions("ids"), {"default": V()}))
register(Entry("segment_embedding", "SegmentEmbedding", TINY.replace(kind="segment_embedding", type_vocab_size=3),
               ids("type_vocab_size"), {"default": V()}))
register(Entry("sinusoidal_position", "SinusoidalPositionalEncoding",
               TINY.replace(kind="sinusoidal_position", position="sinusoidal"), positions("positions"),
               {"default": V()}, float64_output=True, differentiable=False))
register(Entry("scaled_dot_product_attention", "ScaledDotProductAttention",
               TINY.replace(kind="scaled_dot_product_attention"), qkv,
               {"default": V(), "no_mask": V(options={"mask": "none"}), "causal": V({"causal": True}, {"mask": "none"}),
                "padding_causal": V({"causal": True}), "fully_masked": V(options={"mask": "fully_masked"})}))
register(Entry("multi_head_attention", "MultiHeadAttention", TINY.replace(kind="multi_head_attention"),
               masked_hidden,
               {"default": V(), "causal": V({"causal": True}), "cross": V(options={"cross": True}),
                "no_bias": V({"use_bias": False}), "no_mask": V(options={"mask": "none"}),
                "fused": V({"fused_attention": True}, frameworks=FUSED)}))
register(Entry("feed_forward", "FeedForward", TINY.replace(kind="feed_forward"), hidden,
               {"default": V(), "relu": V({"activation": "relu"}), "gelu_tanh": V({"activation": "gelu_tanh"})}))
register(Entry("encoder_layer", "EncoderLayer", TINY.replace(kind="encoder_layer"), masked_hidden,
               {"default": V(), "pre_norm_causal": V({"norm_first": True, "causal": True, "activation": "gelu_tanh",
                                                      "layer_norm_eps": 1e-5}),
                "fused": V({"fused_attention": True}, frameworks=FUSED)}))
register(Entry("decoder_layer", "DecoderLayer", TINY.replace(kind="decoder_layer", activation="relu"),
               decoder_inputs, {"default": V(), "pre_norm": V({"norm_first": True})}))

TINY_BERT = TINY.replace(kind="bert", num_layers=2, max_positions=32)
register(Entry("bert", "Bert", TINY_BERT, token_inputs,
               {"default": V(options={"segments": True}), "mlm": V({"head": "mlm"}),
                "classification": V({"head": "classification"}, {"segments": True}), "qa": V({"head": "qa"}),
                "fused": V({"fused_attention": True}, {"segments": True}, frameworks=FUSED)},
               is_model=True))
register(Entry("gpt2", "GPT2", TINY.replace(kind="gpt2", num_layers=2, norm_first=True, causal=True,
                                            activation="gelu_tanh", layer_norm_eps=1e-5),
               token_inputs, {"default": V(), "fused": V({"fused_attention": True}, frameworks=FUSED)}, is_model=True))
register(Entry("transformer", "Transformer",
               TINY.replace(kind="transformer", position="sinusoidal", activation="relu", layer_norm_eps=1e-6,
                            scale_embeddings=True, num_layers=2, num_decoder_layers=2),
               seq2seq_inputs,
               {"default": V(), "learned_untied": V({"position": "learned", "share_embeddings": False,
                                                     "tie_embeddings": False})},
               is_model=True))


def get(name: str) -> Entry:
    try:
        return ENTRIES[name]
    except KeyError:
        raise ValueError(f"unknown component or model {name!r}; known: {', '.join(ENTRIES)}") from None


def param_shapes(cfg: Config) -> dict[str, tuple]:
    """Canonical name -> shape for `cfg`, declared by the NumPy reference, nothing allocated."""
    entry = get(cfg.kind)
    return entry.implementation("numpy")(*entry.args(cfg)).param_shapes()
