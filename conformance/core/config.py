"""The one frozen config every component, model and preset is described by.

This module imports no framework: `numpy_ref`, `torch_impl` and `tf_impl` all read it.
One flat dataclass (as Hugging Face has one config per model) keeps presets, the
registry, the weight files and the CLI on a single type; a component reads only the
fields it needs. Every numeric convention on which frameworks differ by default
(layer-norm epsilon, GELU erf vs tanh, mask fill, pre- vs post-norm) is a field here,
never a literal in model code.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
POSITIONS = ("learned", "sinusoidal", "rotary", "relative")
RELATIVE_TERMS = ("c2p", "p2c")  # DeBERTa's disentangled terms: content-to-position, position-to-content
HEADS = ("none", "mlm", "classification", "qa", "token_classification", "discriminator", "encoder")
NORMS = ("layer", "rms")
FEED_FORWARDS = ("standard", "gated", "moe")
RMS_UPCASTS = ("none", "statistic", "all")
ROTARY_PAIRINGS = ("half", "interleaved")
ROPE_SCALINGS = ("none", "linear", "dynamic", "llama3", "yarn")
LAYER_TYPES = ("full_attention", "sliding_attention")
CAUSAL_ALIGNMENTS = ("bottom_right", "top_left")
# attention_impl -> the taps of the reference attention it does not produce. "reference" is
# q k^T -> softmax -> @ v one traced op a line; "fused" is one library call (torch's
# F.scaled_dot_product_attention, keras.ops.dot_product_attention, one NumPy expression), whose
# scores (biased, for T5) and probabilities never exist outside it; "tiled" is FlashAttention's loop over
# blocks of queries and keys with an online softmax (numpy_ref.tiled_attention), whose score blocks
# (biased and soft-capped ones too) live only inside the loop. The trace, gradient and explain code
# read this.
ATTENTION_IMPLS = {"reference": (), "fused": ("scores", "biased", "probs"),
                   "tiled": ("scores", "biased", "capped", "probs")}
# weight_quantization -> what each Linear holds: "none" its float kernel; "int8" the kernel as int8 q (in, out)
# plus one float scale per output channel, `kernel_scale` (out,), and computes with s q (conformance.weights.quantize)
WEIGHT_QUANTIZATIONS = ("none", "int8")


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
    use_bias: bool = True          # bias in the attention projections and (see `projection_bias`) the rest
    mask_fill: float = -1e9        # the score a masked position gets before softmax
    position: str = "learned"      # "learned" table or fixed "sinusoidal" encoding
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(D) (2017 paper)
    share_embeddings: bool = True  # encoder-decoder: one token table for source and target
    tie_embeddings: bool = True    # output projection is the token table transposed
    dropout: float = 0.1           # rate used only in training mode, with a supplied keep mask
    head: str = "none"             # BERT task head: "none" (+ pooler), "mlm", "classification", "qa"; an
    #                                encoder-decoder's "none" is its LM head, "encoder" the encoder alone (T5EncoderModel)
    attention_impl: str = "reference"  # "reference", "fused" or "tiled": see ATTENTION_IMPLS
    attention_scale: float | None = None  # scores = q k^T * scale; None: 1/sqrt(Dh) (Gemma 2: query_pre_attn_scalar^-0.5)
    attention_block_q: int = 256   # attention_impl="tiled": queries per block (the last one may be shorter)
    attention_block_k: int = 256   # ... and keys per block: the loop holds (block_q, block_k) scores a head at once
    # ---- BERT's descendants: RoBERTa, DistilBERT, ELECTRA, ALBERT (the bert family) and DeBERTa (its own)
    pad_token_id: int = 0          # the padding id; only RoBERTa's positions read it (pad_positions)
    pad_positions: bool = False    # RoBERTa: positions count the real tokens from pad_token_id + 1 and pads sit
    #                                at pad_token_id, computed from input_ids as transformers does; False: 0..T-1
    embedding_size: int | None = None  # E: embeddings of width E, then a Linear(E, D) into the layers (ELECTRA,
    #                                    ALBERT's factorized embeddings); None: the embeddings are D wide
    num_layer_groups: int | None = None  # ALBERT: G distinct layers, layer i runs group int(i / (L / G)) (G = 1:
    #                                      one layer's weights for every layer); None: each layer its own
    pooler: bool = True            # head "none" has a tanh pooler on position 0 (BERT, RoBERTa, ALBERT); DistilBERT,
    #                                ELECTRA and DeBERTa have none
    mlm_activation: str | None = None  # the masked-LM transform's activation; None: `activation` (BERT, ALBERT);
    #                                    RoBERTa's LM head is erf GELU whatever the layers use
    relative_attention: tuple = ()  # DeBERTa: the position terms added to content-to-content, of RELATIVE_TERMS
    position_buckets: int = 0      # DeBERTa: distances past buckets / 2 share log-spaced buckets (v3: 256);
    #                                0: distances are exact, clipped at max_relative_positions
    max_relative_positions: int | None = None  # DeBERTa: the distance the buckets reach; None: max_positions
    # ---- the LLaMA family (Llama, Mistral, Qwen2, Gemma, Gemma 2) and the components it brought
    norm: str = "layer"            # a model's normalization: "layer" (LayerNorm) or "rms" (RMSNorm, no mean, no beta)
    feed_forward: str = "standard"  # a layer's MLP: "standard" act(x W1) W2, or "gated" down(act(gate x) * up x);
    #                                 "moe": a router and num_experts gated ones, experts_per_token a token (Mixtral)
    rms_norm_offset: float = 0.0   # RMSNorm y = x / rms(x) * (offset + g): Gemma stores g around 0, offset 1
    rms_norm_upcast: str = "statistic"  # half precision: "none"; "statistic" (HF Llama: normalize in float32,
    #                                     cast back, then scale); "all" (HF Gemma, keras-hub: scale in float32 too)
    num_kv_heads: int | None = None  # key/value heads, grouped-query attention; None: num_heads; 1: multi-query
    attention_head_dim: int | None = None  # Dh when it is not D / H (Gemma: 256)
    output_bias: bool | None = None  # bias of the attention output projection and the standard feed-forward's
    #                                  two; None: as use_bias (Qwen2's output: False; ViT's qkv_bias=False: True)
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
    # ---- the Vision Transformer (ViT) and its patch embedding
    image_size: int = 32           # the square image side the position table is for (ViT-Base: 224)
    patch_size: int = 8            # P: the image is cut into (image_size / P)^2 patches of P x P pixels
    num_channels: int = 3          # C: colour channels of an image (RGB)
    pooler: bool = True            # ViT's head "none": tanh(h[:, 0] W + b) as pooled_output (transformers'
    #                                add_pooling_layer of ViTModel; DINO's checkpoints have none). The
    #                                classification head reads h[:, 0] itself and never has one
    interpolate_pos_encoding: bool = False  # accept another image size: the position grid is resized (bicubic,
    #                                         as transformers' interpolate_pos_encoding) and a remainder of fewer
    #                                         than P pixels is dropped; False: images must be image_size square
    # ---- the encoder-decoders T5 and BART
    relative_buckets: int = 32     # position="relative" (T5): buckets of the learned bias per head, half for each
    #                                direction in the encoder's bidirectional attention
    relative_max_distance: int = 128  # ... offsets from max_exact on share log-spaced buckets; from here on, the last
    position_offset: int = 0       # learned positions: position p reads row p + offset (BART's 2); the table keeps
    #                                max_positions rows, so the longest sequence is max_positions - offset
    scale_logits: bool = False     # the head reads the last hidden state times D^-0.5 (T5 with a tied head)
    logits_bias: bool = False      # a bias on each vocabulary logit (BART's final_logits_bias, where not zero)
    # ---- attention through a feature map (numpy_ref.linear_attention)
    performer_features: int = 64   # M, the random features per head of PerformerAttention (FAVOR+)
    # ---- techniques (issue 19)
    weight_quantization: str = "none"  # "none" or "int8": every Linear's kernel as per-channel symmetric int8 (see
    #                                    WEIGHT_QUANTIZATIONS; make the weights with weights.quantize_int8)
    # ---- mixture of experts (Mixtral): feed_forward="moe"
    num_experts: int = 8           # E: the gated expert feed-forwards of each layer (num_local_experts)
    experts_per_token: int = 2     # k: the experts each token is routed to (num_experts_per_tok), at most E
    router_aux_loss_coef: float = 0.001  # the load-balancing loss's weight in the training loss (>= 0)

    def __post_init__(self):
        _check_types(self)
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
        _check_choice("weight_quantization", self.weight_quantization, WEIGHT_QUANTIZATIONS)
        for i, t in enumerate(self.layer_types):
            _check_choice(f"layer_types[{i}]", t, LAYER_TYPES)
        if self.mlm_activation is not None:
            _check_choice("mlm_activation", self.mlm_activation, ACTIVATIONS)
        for i, term in enumerate(self.relative_attention):
            _check_choice(f"relative_attention[{i}]", term, RELATIVE_TERMS)
        if self.num_layer_groups is not None and self.num_layer_groups > self.num_layers:
            raise ValueError(f"Config.num_layer_groups must be at most num_layers={self.num_layers} (each group is "
                             f"run by at least one layer); received num_layer_groups={self.num_layer_groups}")
        if self.pad_positions and self.pad_token_id + 1 >= self.max_positions:
            raise ValueError(f"Config.pad_positions numbers tokens from pad_token_id + 1 = {self.pad_token_id + 1}, "
                             f"which must be below max_positions={self.max_positions}")
        if self.position_buckets == 1:
            raise ValueError("Config.position_buckets must be 0 (exact distances) or at least 2 (buckets / 2 exact "
                             "ones each side); received position_buckets=1")
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
        if self.image_size % self.patch_size:
            raise ValueError(f"Config.patch_size must divide image_size (the position table holds whole patches); "
                             f"received image_size={self.image_size}, patch_size={self.patch_size}")
        if self.position == "relative" and (self.relative_buckets < 4 or self.relative_buckets % 2):
            raise ValueError(f"Config.relative_buckets must be an even int >= 4 (half a direction, half of that "
                             f"exact); received relative_buckets={self.relative_buckets!r}")
        if self.position == "relative" and not self.relative_max_distance > self.relative_buckets // 2:
            raise ValueError(f"Config.relative_max_distance must exceed relative_buckets // 2 = "
                             f"{self.relative_buckets // 2} (the exact buckets' reach); received "
                             f"relative_max_distance={self.relative_max_distance!r}")
        if self.experts_per_token > self.num_experts:
            raise ValueError(f"Config.experts_per_token must be at most num_experts={self.num_experts} (a token "
                             f"picks k distinct experts); received experts_per_token={self.experts_per_token}")
        if self.position_offset >= self.max_positions:
            raise ValueError(f"Config.position_offset must be an int in [0, max_positions={self.max_positions}); "
                             f"received position_offset={self.position_offset!r}")

    @property
    def head_dim(self) -> int:
        """Dh: `attention_head_dim`, else D / H."""
        return self.attention_head_dim or self.d_model // self.num_heads

    @property
    def projection_bias(self) -> bool:
        """Do the projections other than query, key and value (the attention output, the standard
        feed-forward's two) have a bias? `output_bias`, else `use_bias` (T5: none; ViT without qkv_bias: these)."""
        return self.use_bias if self.output_bias is None else self.output_bias

    @property
    def kv_heads(self) -> int:
        """The key/value heads: `num_kv_heads`, else one per query head."""
        return self.num_kv_heads or self.num_heads

    def sliding(self, layer: int) -> bool:
        """Does layer `layer` attend through the sliding window?"""
        if self.sliding_window is None:
            return False
        return not self.layer_types or self.layer_types[layer] == "sliding_attention"

    def layer_group(self, layer: int) -> int:
        """The distinct layer whose weights layer `layer` runs: ALBERT's int(i / (L / G)), as transformers
        computes it (consecutive layers share a group); `layer` itself without num_layer_groups."""
        if self.num_layer_groups is None:
            return layer
        return int(layer / (self.num_layers / self.num_layer_groups))

    @property
    def relative_span(self) -> int:
        """k, DeBERTa's relative attention span: the relative table has 2k rows (buckets, else distances)."""
        return self.position_buckets or self.max_relative_positions or self.max_positions

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

    def without_layers(self, **changes) -> "Config":
        """This config, with `changes`, and no layers: a model's embeddings and head alone, which a streamed
        run builds to run those parts (`conformance.report.stream`). `changes` are checked as `replace`
        checks them; only here may num_layers be 0, which a model a user builds never has."""
        checked = self.replace(**changes)
        shell = copy.copy(checked)
        object.__setattr__(shell, "num_layers", 0)
        object.__setattr__(shell, "layer_types", ())
        return shell

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        if not isinstance(d, dict):
            raise ValueError(f"a Config is read from a dict of its fields; received {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known, key=str)
        if unknown:
            raise ValueError(f"unknown Config fields {unknown}; expected a subset of {sorted(known)}")
        if "kind" not in d:
            raise ValueError(f"Config fields must include kind (the registry entry); received {sorted(d)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})  # JSON lists: tuples


# What every field's type allows, read from its annotation, so a new field is checked with no new code:
# an int is a count (> 0: zero layers, heads, labels or segments make no model), a float is finite and
# > 0 (an epsilon, a base, a factor, a cap), a bool is True or False (never 1), a str a str, a tuple a
# tuple; "| None" adds None. The fields below are the exceptions, each with its own range.
NON_NEGATIVE = ("sliding_window_right", "type_vocab_size", "pad_token_id", "position_buckets",  # an int >= 0
                "position_offset")  # (no segment table: DeBERTa-v3; 0 buckets: exact relative distances;
#                                     no offset: every learned table but BART's)
SIGNED = ("rms_norm_offset",)              # any finite float
RANGES = {"dropout": (0.0, 1.0), "router_aux_loss_coef": (0.0, math.inf)}  # a float in [low, high)
MASK_FILL_MAX = -1e4  # the largest fill still far below any score: a fill near the scores (or above them)
#                       leaves masked positions weight, and a positive one reverses the mask


def _check_types(cfg) -> None:
    for f in dataclasses.fields(cfg):
        name, value = f.name, getattr(cfg, f.name)
        annotated, optional = f.type.split(" | ")[0], f.type.endswith("| None")
        if value is None and optional:
            continue
        either = " or None" if optional else ""
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if name == "mask_fill":
            if not number or math.isnan(value) or value > MASK_FILL_MAX:
                raise ValueError(f"Config.mask_fill must be a number <= {MASK_FILL_MAX:g} (far below any score, so a "
                                 f"masked position gets no weight; -inf allowed); received mask_fill={value!r}")
        elif name in RANGES:
            low, high = RANGES[name]
            if not number or not low <= value < high:
                raise ValueError(f"Config.{name} must be in [{low:g}, {high:g}); received {name}={value!r}")
        elif annotated == "int" and name in NON_NEGATIVE:
            if not number or not isinstance(value, int) or value < 0:
                raise ValueError(f"Config.{name} must be an int >= 0; received {name}={value!r}")
        elif annotated == "int":
            if not number or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Config.{name} must be a positive int{either}; received {name}={value!r}")
        elif annotated == "float":
            finite = number and math.isfinite(value)
            if not finite or (name not in SIGNED and value <= 0):
                what = "a finite number" if name in SIGNED else "a finite number > 0"
                raise ValueError(f"Config.{name} must be {what}{either}; received {name}={value!r}")
        elif annotated == "bool" and not isinstance(value, bool):
            raise ValueError(f"Config.{name} must be True or False{either}; received {name}={value!r}")
        elif annotated == "str" and not isinstance(value, str):
            raise ValueError(f"Config.{name} must be a str; received {name}={value!r}")
        elif annotated == "tuple" and not isinstance(value, tuple):
            raise ValueError(f"Config.{name} must be a tuple; received {name}={value!r}")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"Config.{name} must be one of {list(choices)}; received {name}={value!r}")
