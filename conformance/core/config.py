"""The one frozen config every component, model and preset is described by.

This module imports no framework: `numpy_ref`, `torch_impl` and `tf_impl` all read it.
One flat dataclass (as Hugging Face has one config per model) keeps presets, the
registry, the weight files and the CLI on a single type; a component reads only the
fields it needs. Every numeric convention on which frameworks differ by default
(layer-norm epsilon, GELU erf vs tanh, mask fill, pre- vs post-norm) is a field here,
never a literal in model code.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
POSITIONS = ("learned", "sinusoidal")
HEADS = ("none", "mlm", "classification", "qa")
# attention_impl -> the taps of the reference attention it does not produce. "reference" is
# q k^T -> softmax -> @ v one traced op a line; "fused" is one library call (torch's
# F.scaled_dot_product_attention, keras.ops.dot_product_attention, one NumPy expression), whose
# scores and probabilities never exist outside it. The trace, gradient and explain code read this.
ATTENTION_IMPLS = {"reference": (), "fused": ("scores", "probs")}


@dataclass(frozen=True)
class Config:
    kind: str                      # registry entry: "multi_head_attention", "bert", "gpt2", ...
    d_model: int = 32              # D, the residual width
    num_heads: int = 4             # H; the head width Dh = D / H
    d_ff: int = 64                 # inner width of the feed-forward block
    num_layers: int = 2            # encoder layers (BERT, Transformer) or blocks (GPT-2)
    num_decoder_layers: int = 2    # decoder layers of the encoder-decoder Transformer
    vocab_size: int = 97
    max_positions: int = 64        # rows of the position table; longest sequence accepted
    type_vocab_size: int = 2       # BERT segments
    num_labels: int = 3            # sequence-classification classes
    activation: str = "gelu"       # "gelu" (exact, erf), "gelu_tanh" (GPT-2), "relu" (2017)
    layer_norm_eps: float = 1e-12  # BERT 1e-12; GPT-2 and torch.nn.LayerNorm 1e-5; Keras 1e-3
    norm_first: bool = False       # pre-norm (GPT-2) if True, post-norm (2017, BERT) if False
    causal: bool = False           # self-attention sees only earlier positions
    use_bias: bool = True          # bias in the attention projections
    mask_fill: float = -1e9        # the score a masked position gets before softmax
    position: str = "learned"      # "learned" table or fixed "sinusoidal" encoding
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(D) (2017 paper)
    share_embeddings: bool = True  # encoder-decoder: one token table for source and target
    tie_embeddings: bool = True    # output projection is the token table transposed
    dropout: float = 0.1           # rate used only in training mode, with a supplied keep mask
    head: str = "none"             # BERT task head: "none" (+ pooler), "mlm", "classification", "qa"
    attention_impl: str = "reference"  # "reference" or "fused": see ATTENTION_IMPLS
    attention_scale: float | None = None  # scores = q k^T * scale; None: 1/sqrt(Dh), as every model here

    def __post_init__(self):
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("position", self.position, POSITIONS)
        _check_choice("head", self.head, HEADS)
        _check_choice("attention_impl", self.attention_impl, tuple(ATTENTION_IMPLS))
        for name in ("d_model", "num_heads", "d_ff", "vocab_size", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Config.{name} must be a positive int; received {name}={value!r}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"Config.num_heads must divide d_model; received d_model={self.d_model}, "
                f"num_heads={self.num_heads} (remainder {self.d_model % self.num_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"Config.dropout must be in [0, 1); received dropout={self.dropout}")
        if self.attention_scale is not None and not self.attention_scale > 0:
            raise ValueError(f"Config.attention_scale must be > 0 or None; received {self.attention_scale}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"Config.layer_norm_eps must be > 0; received {self.layer_norm_eps}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def scale(self) -> float:
        """The attention scale: `attention_scale` if set, else 1/sqrt(Dh)."""
        return 1.0 / math.sqrt(self.head_dim) if self.attention_scale is None else self.attention_scale

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown Config fields {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"Config.{name} must be one of {list(choices)}; received {name}={value!r}")
