"""keras-hub's `BertBackbone` and `GPT2Backbone` as oracles, loaded with the canonical weights.

    kh = backbone(cfg)                    # built from the Config's dimensions, no preset, no download
    load(kh, cfg, w)                      # every keras-hub variable set once, from KERAS_HUB below
    out = run(kh, cfg, **inputs)          # NumPy in, our output names out

Like `conformance.oracles.layers`, this maps canonical weights into a *library's* model, not
into one of our mirrors. Every keras-hub name and layout quirk lives in the one table
`KERAS_HUB` (canonical module -> keras-hub layer path and leaves). keras-hub keeps each
attention projection per head, as `keras.layers.MultiHeadAttention` does: query, key and
value kernels `(D, H, Dh)` with biases `(H, Dh)`, the output kernel `(H, Dh, D)`; the
canonical `[in, out]` kernels are reshaped to those, never transposed.

Where keras-hub's numerics are its own (measured in `test_keras_hub.py`, each shown to be
exactly the named cause by rebuilding our reference with keras-hub's choice):

- GELU. `BertBackbone` hard-codes `gelu_approximate` (the tanh formula) in every layer;
  BERT as published in `transformers` and our `bert` presets use the exact erf GELU. This
  is the one difference visible in float32: `KERAS_HUB_NUMERICS` names keras-hub's choice
  and the reference rebuilt with it (`activation="gelu_tanh"`) matches. (The original
  TensorFlow BERT code also used tanh, so keras-hub follows Google's code, HF the paper.)
  GPT-2 uses tanh everywhere: no difference.
- Layer-norm epsilon. Hard-coded 1e-12 (BERT) and 1e-5 (GPT-2, also its final norm): the
  published values, equal to our presets'. A Config with another epsilon cannot be built
  faithfully and is listed by `differences`; keras's own default (1e-3) is never used.
- Attention scale in float64 (the trap of `conformance.oracles.layers.keras_multi_head_attention`,
  in a second place). With dropout > 0 (the backbones' 0.1) `MultiHeadAttention` takes its
  einsum path, which scales the query by `ops.cast(1/sqrt(Dh), dtype)` (with dropout 0,
  `ops.dot_product_attention` does the same `tf.cast`): TensorFlow converts the Python float
  to a float32 constant first, so in float64 the scale is rounded to float32. The tanh GELU
  (`tf.nn.gelu`) does the same to its 0.044715. Both are invisible in float32 and each alone
  fails the float64 tolerance; `exact_constants` swaps in float64 constants and then
  keras-hub matches the float64 reference.
- Masks. keras-hub's padding mask (1 = attend) hides keys only, as ours does; padded query
  rows are computed, not zeroed. Keras's masked softmax replaces blocked scores with -1e9
  (our `mask_fill`) and then zeroes blocked probabilities, so a fully blocked row (a
  sequence that is all padding) gives zeros, as ours is defined to (transformers gives a
  uniform row there). GPT-2's causal mask is combined with the padding mask by
  `ops.minimum`, the logical AND.
- Positions are 0..T-1 whatever the padding (a slice of the table), as in ours and HF's.
  The pooler is `tanh(Dense)` on position 0, as ours. The GPT-2 backbone ends with its
  final layer norm and returns no logits: `run` computes them with keras-hub's own tied
  `ReversibleEmbedding(reverse=True)`, as `GPT2CausalLM` does.
- Softmax dtype: keras-hub computes softmax and layer norm in at least float32 under any
  dtype policy; in float32 and float64 that is the compute dtype, so nothing changes here.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from conformance.spec import registry
from conformance import weights as weights_lib
from conformance.core.config import Config


@dataclass(frozen=True)
class Leaf:
    """One canonical parameter leaf <-> one keras-hub variable leaf, and the layout change."""
    canonical: str
    keras_hub: str
    layout: str = "same"  # "same", or a per-head layout in LAYOUTS


LAYOUTS = {  # layout -> (canonical array, cfg) -> keras-hub array
    "same": lambda a, cfg: a,
    "heads_in": lambda a, cfg: a.reshape(cfg.d_model, cfg.num_heads, cfg.head_dim),    # (D, D) -> (D, H, Dh)
    "heads_bias": lambda a, cfg: a.reshape(cfg.num_heads, cfg.head_dim),               # (D,) -> (H, Dh)
    "heads_out": lambda a, cfg: a.reshape(cfg.num_heads, cfg.head_dim, cfg.d_model),   # (D, D) -> (H, Dh, D)
}
INVERSE = {  # keras-hub array -> canonical array
    "same": lambda a, cfg: a,
    "heads_in": lambda a, cfg: a.reshape(cfg.d_model, cfg.d_model),
    "heads_bias": lambda a, cfg: a.reshape(cfg.d_model),
    "heads_out": lambda a, cfg: a.reshape(cfg.d_model, cfg.d_model),
}

DENSE = (Leaf("kernel", "kernel"), Leaf("bias", "bias"))
HEADS_IN = (Leaf("kernel", "kernel", "heads_in"), Leaf("bias", "bias", "heads_bias"))
HEADS_OUT = (Leaf("kernel", "kernel", "heads_out"), Leaf("bias", "bias"))
NORM = (Leaf("gamma", "gamma"), Leaf("beta", "beta"))
TABLE = (Leaf("table", "embeddings"),)

# canonical module -> (keras-hub layer path, leaves); "{i}" is a layer index. BERT and GPT-2
# share the embedding names; their blocks differ (`encoder.{i}` / `self_attention_layer` for
# BERT's TransformerEncoder, `layers.{i}` / `self_attention` for GPT-2's TransformerDecoder).
KERAS_HUB = {
    "embeddings.token": ("token_embedding", TABLE),
    "embeddings.position": ("position_embedding", TABLE),
    "embeddings.segment": ("segment_embedding", TABLE),
    "embeddings.norm": ("embeddings_layer_norm", NORM),
    "encoder.{i}.attention.query": ("transformer_layer_{i}/self_attention_layer/query", HEADS_IN),
    "encoder.{i}.attention.key": ("transformer_layer_{i}/self_attention_layer/key", HEADS_IN),
    "encoder.{i}.attention.value": ("transformer_layer_{i}/self_attention_layer/value", HEADS_IN),
    "encoder.{i}.attention.output": ("transformer_layer_{i}/self_attention_layer/attention_output", HEADS_OUT),
    "encoder.{i}.attention_norm": ("transformer_layer_{i}/self_attention_layer_norm", NORM),
    "encoder.{i}.feed_forward.inner": ("transformer_layer_{i}/feedforward_intermediate_dense", DENSE),
    "encoder.{i}.feed_forward.outer": ("transformer_layer_{i}/feedforward_output_dense", DENSE),
    "encoder.{i}.feed_forward_norm": ("transformer_layer_{i}/feedforward_layer_norm", NORM),
    "pooler": ("pooled_dense", DENSE),
    "layers.{i}.attention.query": ("transformer_layer_{i}/self_attention/query", HEADS_IN),
    "layers.{i}.attention.key": ("transformer_layer_{i}/self_attention/key", HEADS_IN),
    "layers.{i}.attention.value": ("transformer_layer_{i}/self_attention/value", HEADS_IN),
    "layers.{i}.attention.output": ("transformer_layer_{i}/self_attention/attention_output", HEADS_OUT),
    "layers.{i}.attention_norm": ("transformer_layer_{i}/self_attention_layer_norm", NORM),
    "layers.{i}.feed_forward.inner": ("transformer_layer_{i}/feedforward_intermediate_dense", DENSE),
    "layers.{i}.feed_forward.outer": ("transformer_layer_{i}/feedforward_output_dense", DENSE),
    "layers.{i}.feed_forward_norm": ("transformer_layer_{i}/feedforward_layer_norm", NORM),
    "final_norm": ("layer_norm", NORM),
}

# What keras-hub hard-codes, as Config fields: a reference rebuilt with these is keras-hub's math.
KERAS_HUB_NUMERICS = {
    "bert": {"activation": "gelu_tanh", "layer_norm_eps": 1e-12, "norm_first": False, "causal": False},
    "gpt2": {"activation": "gelu_tanh", "layer_norm_eps": 1e-5, "norm_first": True, "causal": True},
}
# What the backbones cannot express at all: a Config asking otherwise is refused.
REQUIRED = {"use_bias": True, "position": "learned", "scale_embeddings": False, "head": "none"}


def _keras_hub():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras_hub
    return keras_hub


def differences(cfg: Config) -> dict[str, tuple]:
    """Config field -> (ours, keras-hub's) for every numeric choice keras-hub hard-codes otherwise."""
    return {field: (getattr(cfg, field), value) for field, value in _numerics(cfg).items()
            if getattr(cfg, field) != value}


def numerics_config(cfg: Config) -> Config:
    """`cfg` with keras-hub's hard-coded numerics: the reference to hold keras-hub against exactly."""
    return cfg.replace(**_numerics(cfg))


def backbone(cfg: Config, dtype: str = "float32"):
    """A keras-hub BertBackbone / GPT2Backbone with `cfg`'s dimensions (random weights: call `load`)."""
    keras_hub = _keras_hub()
    _numerics(cfg)
    for field, value in REQUIRED.items():
        if getattr(cfg, field) != value:
            raise ValueError(f"keras-hub's {cfg.kind} backbone needs Config.{field}={value!r}; "
                             f"received {field}={getattr(cfg, field)!r}")
    dims = dict(vocabulary_size=cfg.vocab_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                hidden_dim=cfg.d_model, intermediate_dim=cfg.d_ff, dropout=cfg.dropout,
                max_sequence_length=cfg.max_positions, dtype=dtype)
    if cfg.kind == "bert":
        return keras_hub.models.BertBackbone(num_segments=cfg.type_vocab_size, **dims)
    return keras_hub.models.GPT2Backbone(**dims)


def variable_map(cfg: Config) -> dict[str, tuple[str, str]]:
    """Canonical name -> (keras-hub variable path, layout), for every parameter of `cfg`."""
    expected = registry.param_shapes(cfg)
    rows = {}
    for module, (path, leaves) in KERAS_HUB.items():
        for i in range(cfg.num_layers) if "{i}" in module else [None]:
            for leaf in leaves:
                name = f"{module.format(i=i)}.{leaf.canonical}"
                if name in expected:
                    rows[name] = (f"{path.format(i=i)}/{leaf.keras_hub}", leaf.layout)
    missing = sorted(expected.keys() - rows.keys())
    if missing:
        raise ValueError(f"no keras-hub variable for canonical weights {missing}")
    return rows


def load(model, cfg: Config, w: dict[str, np.ndarray]):
    """Assign the canonical weights `w` to keras-hub's variables; every variable exactly once."""
    weights_lib.check(cfg, w)
    variables = {v.path: v for v in model.weights}
    rows = variable_map(cfg)
    unknown = sorted(path for path, _ in rows.values() if path not in variables)
    unset = sorted(variables.keys() - {path for path, _ in rows.values()})
    if unknown or unset:
        raise ValueError(f"keras-hub {cfg.kind} variables do not line up with KERAS_HUB: "
                         f"not in the model {unknown}, never set {unset}")
    for name, (path, layout) in rows.items():
        v = variables[path]
        v.assign(LAYOUTS[layout](np.asarray(w[name]), cfg).astype(v.dtype))
    return model


def export(model, cfg: Config) -> dict[str, np.ndarray]:
    """keras-hub's variables back under canonical names and layout (the inverse of `load`)."""
    variables = {v.path: v for v in model.weights}
    return {name: INVERSE[layout](np.asarray(variables[path].numpy()), cfg)
            for name, (path, layout) in variable_map(cfg).items()}


def inputs(cfg: Config, input_ids, attention_mask=None, token_type_ids=None) -> dict[str, np.ndarray]:
    """Our input names -> keras-hub's: token_ids, padding_mask (1 = attend) and BERT's segment_ids."""
    ids = np.asarray(input_ids).astype("int32")
    out = {"token_ids": ids,
           "padding_mask": (np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)).astype("int32")}
    if cfg.kind == "bert":
        out["segment_ids"] = (np.zeros_like(ids) if token_type_ids is None
                              else np.asarray(token_type_ids).astype("int32"))
    return out


def forward(model, cfg: Config):
    """A function of keras-hub's input dict -> our output names, as tensors (for tf.function / XLA)."""
    if cfg.kind == "bert":
        def bert(x):
            out = model(x, training=False)
            return {"last_hidden_state": out["sequence_output"], "pooled_output": out["pooled_output"]}
        return bert

    def gpt2(x):
        h = model(x, training=False)                                        # (B, T, D), after the final norm
        return {"logits": model.token_embedding(h, reverse=True), "last_hidden_state": h}  # (B, T, V)
    return gpt2


def run(model, cfg: Config, **our_inputs) -> dict[str, np.ndarray]:
    """Run keras-hub on our inputs (input_ids, attention_mask, token_type_ids); NumPy out."""
    out = forward(model, cfg)(inputs(cfg, **our_inputs))
    return {k: np.asarray(v) for k, v in out.items()}


def exact_constants(model):
    """Replace the two float32-rounded constants of keras-hub in float64 (see the docstring):
    the attention scale, stored as a float64 NumPy scalar (`tf.cast` keeps it exact), and the
    tanh GELU, written with float64 constants."""
    import keras
    from keras import ops

    def gelu_tanh(x):
        return 0.5 * x * (1.0 + ops.tanh(math.sqrt(2.0 / math.pi) * (x + np.float64(0.044715) * x**3)))

    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.MultiHeadAttention):
            layer._inverse_sqrt_key_dim = np.float64(1.0 / math.sqrt(layer._key_dim))
        if isinstance(layer, keras.layers.Dense) and layer.name == "feedforward_intermediate_dense":
            layer.activation = gelu_tanh
    return model


def _numerics(cfg: Config) -> dict:
    if cfg.kind not in KERAS_HUB_NUMERICS:
        raise ValueError(f"keras-hub oracles exist for {sorted(KERAS_HUB_NUMERICS)}; received kind={cfg.kind!r}")
    return KERAS_HUB_NUMERICS[cfg.kind]
