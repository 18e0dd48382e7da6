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

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
POSITIONS = ("learned", "sinusoidal", "rotary", "relative")
HEADS = ("none", "mlm", "classification", "qa", "encoder")
NORMS = ("layer", "rms")
FEED_FORWARDS = ("standard", "gated")
RMS_UPCASTS = ("none", "statistic", "all")
ROTARY_PAIRINGS = ("half", "interleaved")
ROPE_SCALINGS = ("none", "linear", "dynamic", "llama3", "yarn")
LAYER_TYPES = ("full_attention", "sliding_attention")
CAUSAL_ALIGNMENTS = ("bottom_right", "top_left")
# attention_impl -> the taps of the reference attention it does not produce. "reference" is
# q k^T -> softmax -> @ v one traced op a line; "fused" is one library call (torch's
# F.scaled_dot_product_attention, keras.ops.dot_product_attention, one NumPy expression), whose
# scores (biased, for T5) and probabilities never exist outside it. The trace, gradient and explain code
# read this.
ATTENTION_IMPLS = {"reference": (), "fused": ("scores", "biased", "probs")}


@dataclass(frozen=True)
class Config:
    kind: str                      # registry entry: "multi_head_attention", "bert", "gpt2", ...
    d_model: int = 32              # D, the residual width
    num_heads: int = 4             # H; the head width Dh = D / H
    d_ff: int = 64                 # inner width of the feed-forward block
    num_layers: int = 2            # encoder layers (BERT, Transformer) or blocks (GPT-2)
    num_decoder_layers: int = 2    # decoder layers of the encoder-decoder Transformer
    vocab_size: int = 97
    max_positions: int = 64        # rows of the position table; longest sequence accepted (less position_offset)
    type_vocab_size: int = 2       # BERT segments
    num_labels: int = 3            # sequence-classification classes
    activation: str = "gelu"       # "gelu" (exact, erf), "gelu_tanh" (GPT-2), "relu" (2017)
    layer_norm_eps: float = 1e-12  # BERT 1e-12; GPT-2 and torch.nn.LayerNorm 1e-5; Keras 1e-3
    norm_first: bool = False       # pre-norm (GPT-2) if True, post-norm (2017, BERT) if False
    causal: bool = False           # self-attention sees only earlier positions
    use_bias: bool = True          # bias in the attention projections and the standard feed-forward's two
    mask_fill: float = -1e9        # the score a masked position gets before softmax
    position: str = "learned"      # "learned" table or fixed "sinusoidal" encoding
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(D) (2017 paper)
    share_embeddings: bool = True  # encoder-decoder: one token table for source and target
    tie_embeddings: bool = True    # output projection is the token table transposed
    dropout: float = 0.1           # rate used only in training mode, with a supplied keep mask
    head: str = "none"             # BERT task head: "none" (+ pooler), "mlm", "classification", "qa"; an
    #                                encoder-decoder's "none" is its LM head, "encoder" the encoder alone (T5EncoderModel)
    attention_impl: str = "reference"  # "reference" or "fused": see ATTENTION_IMPLS
    attention_scale: float | None = None  # scores = q k^T * scale; None: 1/sqrt(Dh) (Gemma 2: query_pre_attn_scalar^-0.5)
    # ---- the LLaMA family (Llama, Mistral, Qwen2, Gemma, Gemma 2) and the components it brought
    norm: str = "layer"            # a model's normalization: "layer" (LayerNorm) or "rms" (RMSNorm, no mean, no beta)
    feed_forward: str = "standard"  # a layer's MLP: "standard" act(x W1) W2, or "gated" down(act(gate x) * up x)
    rms_norm_offset: float = 0.0   # RMSNorm y = x / rms(x) * (offset + g): Gemma stores g around 0, offset 1
    rms_norm_upcast: str = "statistic"  # half precision: "none"; "statistic" (HF Llama: normalize in float32,
    #                                     cast back, then scale); "all" (HF Gemma, keras-hub: scale in float32 too)
    num_kv_heads: int | None = None  # key/value heads, grouped-query attention; None: num_heads; 1: multi-query
    attention_head_dim: int | None = None  # Dh when it is not D / H (Gemma: 256)
    output_bias: bool | None = None  # bias of the attention output projection; None: as use_bias (Qwen2: False)
    mlp_bias: bool = False         # biases of the gated feed-forward's projections (Llama's mlp_bias)
    rope_theta: float = 10000.0    # the rotary base: Llama 2 1e4, Llama 3 5e5, Qwen2 1e6
    rotary_pairing: str = "half"   # "half": feature i with i + Dr/2 (rotate_half; HF, GPT-NeoX); "interleaved": 2i
    #                                with 2i + 1 (GPT-J, Meta's original checkpoints)
    rotary_dim: int | None = None  # the first Dr features of each head rotate, the rest pass; None: all of them
    rope_scaling: str = "none"     # "none", "linear", "dynamic" (NTK), "llama3", "yarn": the transformers rope types
    rope_factor: float = 1.0       # the scaling factor of every type
    rope_low_freq_factor: float = 1.0   # llama3
    rope_high_freq_factor: float = 4.0  # llama3
    rope_original_max_positions: int | None = None  # llama3, yarn: the pretraining context; None: max_positions
    rope_beta_fast: float = 32.0   # yarn
    rope_beta_slow: float = 1.0    # yarn
    rope_attention_factor: float | None = None  # yarn: cos and sin scaled by it; None: 0.1 ln(factor) + 1
    rope_truncate: bool = True     # yarn: round the correction range to whole dimensions
    rotary_float32: bool = True    # inverse frequencies and angles pos * inv_freq in float32, as transformers and
    #                                keras-hub compute them (at position 131071 a float64 angle differs by 3e-3)
    sliding_window: int | None = None  # local attention: each query sees its last W keys, itself included
    sliding_window_right: int = 0  # ... and R keys after it (bidirectional local attention)
    layer_types: tuple = ()        # per layer "full_attention" or "sliding_attention"; (): every layer slides
    #                                if sliding_window is set (Mistral); Gemma 2 alternates, Qwen2 slides the top ones
    attn_logit_softcap: float | None = None   # scores = cap tanh(scores / cap), before the mask (Gemma 2: 50)
    final_logit_softcap: float | None = None  # logits = cap tanh(logits / cap) (Gemma 2: 30)
    qk_norm: bool = False          # RMSNorm over each head's q and k before the rotation (Qwen3, Gemma 3)
    causal_alignment: str = "bottom_right"  # T queries, S > T keys: "bottom_right" (query i at S - T + i: a KV
    #                                        cache) or "top_left" (query i at i: PyTorch's and ONNX's is_causal)
    sandwich_norm: bool = False    # Gemma 2: a norm on the attention's and the feed-forward's outputs too
    checkpoint: str = ""           # the Hugging Face model_type this config writes as; "": its family's first
    # ---- the encoder-decoders T5 and BART
    relative_buckets: int = 32     # position="relative" (T5): buckets of the learned bias per head, half for each
    #                                direction in the encoder's bidirectional attention
    relative_max_distance: int = 128  # ... offsets from max_exact on share log-spaced buckets; from here on, the last
    position_offset: int = 0       # learned positions: position p reads row p + offset (BART's 2); the table keeps
    #                                max_positions rows, so the longest sequence is max_positions - offset
    scale_logits: bool = False     # the head reads the last hidden state times D^-0.5 (T5 with a tied head)
    logits_bias: bool = False      # a bias on each vocabulary logit (BART's final_logits_bias, where not zero)

    def __post_init__(self):
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("position", self.position, POSITIONS)
        _check_choice("head", self.head, HEADS)
        _check_choice("attention_impl", self.attention_impl, tuple(ATTENTION_IMPLS))
        _check_choice("norm", self.norm, NORMS)
        _check_choice("feed_forward", self.feed_forward, FEED_FORWARDS)
        _check_choice("rms_norm_upcast", self.rms_norm_upcast, RMS_UPCASTS)
        _check_choice("rotary_pairing", self.rotary_pairing, ROTARY_PAIRINGS)
        _check_choice("rope_scaling", self.rope_scaling, ROPE_SCALINGS)
        _check_choice("causal_alignment", self.causal_alignment, CAUSAL_ALIGNMENTS)
        for i, t in enumerate(self.layer_types):
            _check_choice(f"layer_types[{i}]", t, LAYER_TYPES)
        for name in ("d_model", "num_heads", "d_ff", "vocab_size", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Config.{name} must be a positive int; received {name}={value!r}")
        for name in ("num_kv_heads", "attention_head_dim", "rotary_dim", "sliding_window", "rope_original_max_positions"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"Config.{name} must be a positive int or None; received {name}={value!r}")
        if self.attention_head_dim is None and self.d_model % self.num_heads:
            raise ValueError(
                f"Config.num_heads must divide d_model; received d_model={self.d_model}, "
                f"num_heads={self.num_heads} (remainder {self.d_model % self.num_heads})")
        if self.num_heads % self.kv_heads:
            raise ValueError(f"Config.num_kv_heads must divide num_heads (each key/value head serves a group of "
                             f"query heads); received num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}")
        if self.rotary_dim is not None and (self.rotary_dim > self.head_dim or self.rotary_dim % 2):
            raise ValueError(f"Config.rotary_dim must be even and at most head_dim={self.head_dim}; "
                             f"received rotary_dim={self.rotary_dim}")
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise ValueError(f"Config.layer_types must give one type per layer (num_layers={self.num_layers}); "
                             f"received {len(self.layer_types)} types")
        if self.rope_scaling != "none" and not self.rope_factor > 0:
            raise ValueError(f"Config.rope_factor must be > 0; received rope_factor={self.rope_factor!r}")
        if self.rope_scaling == "dynamic" and (self.rotary_dim or self.head_dim) <= 2:
            raise ValueError(f"Config.rope_scaling='dynamic' needs a rotated width above 2 (its base grows as "
                             f"^(Dr / (Dr - 2))); received rotary width {self.rotary_dim or self.head_dim}")
        if self.rope_scaling == "llama3" and not self.rope_high_freq_factor > self.rope_low_freq_factor:
            raise ValueError(f"Config.rope_high_freq_factor must be > rope_low_freq_factor for llama3; received "
                             f"high={self.rope_high_freq_factor!r}, low={self.rope_low_freq_factor!r}")
        if self.sliding_window is not None and self.rope_scaling == "none" and self.sliding_window > self.max_positions:
            raise ValueError(f"Config.sliding_window must be at most max_positions={self.max_positions} (a window "
                             f"wider than every sequence the model takes never slides: set sliding_window=None); "
                             f"received sliding_window={self.sliding_window}")
        if self.layer_types and self.sliding_window is None and "sliding_attention" in self.layer_types:
            raise ValueError(f"Config.layer_types names sliding_attention layers, which need a sliding_window; "
                             f"received sliding_window=None")
        if not isinstance(self.sliding_window_right, int) or self.sliding_window_right < 0:
            raise ValueError(f"Config.sliding_window_right must be an int >= 0; "
                             f"received sliding_window_right={self.sliding_window_right!r}")
        for name in ("attn_logit_softcap", "final_logit_softcap"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"Config.{name} must be > 0 or None; received {name}={value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"Config.dropout must be in [0, 1); received dropout={self.dropout}")
        if self.attention_scale is not None and not self.attention_scale > 0:
            raise ValueError(f"Config.attention_scale must be > 0 or None; received {self.attention_scale}")
        if self.position == "relative" and (self.relative_buckets < 4 or self.relative_buckets % 2):
            raise ValueError(f"Config.relative_buckets must be an even int >= 4 (half a direction, half of that "
                             f"exact); received relative_buckets={self.relative_buckets!r}")
        if self.position == "relative" and not self.relative_max_distance > self.relative_buckets // 2:
            raise ValueError(f"Config.relative_max_distance must exceed relative_buckets // 2 = "
                             f"{self.relative_buckets // 2} (the exact buckets' reach); received "
                             f"relative_max_distance={self.relative_max_distance!r}")
        if not isinstance(self.position_offset, int) or not 0 <= self.position_offset < self.max_positions:
            raise ValueError(f"Config.position_offset must be an int in [0, max_positions={self.max_positions}); "
                             f"received position_offset={self.position_offset!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"Config.layer_norm_eps must be > 0; received {self.layer_norm_eps}")

    @property
    def head_dim(self) -> int:
        """Dh: `attention_head_dim`, else D / H."""
        return self.attention_head_dim or self.d_model // self.num_heads

    @property
    def kv_heads(self) -> int:
        """The key/value heads: `num_kv_heads`, else one per query head."""
        return self.num_kv_heads or self.num_heads

    def sliding(self, layer: int) -> bool:
        """Does layer `layer` attend through the sliding window?"""
        if self.sliding_window is None:
            return False
        return not self.layer_types or self.layer_types[layer] == "sliding_attention"

    @property
    def longest(self) -> int:
        """The longest sequence the position table takes: max_positions rows, less the offset's."""
        return self.max_positions - self.position_offset

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
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})  # JSON lists: tuples


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"Config.{name} must be one of {list(choices)}; received {name}={value!r}")
