"""keras-hub's backbones (BERT, GPT-2, Llama, Mistral, Qwen, Gemma, Mixtral, ViT) as oracles, loaded with the canonical weights.

    kh = backbone(cfg)                    # built from the Config's dimensions, no preset, no download
    load(kh, cfg, w)                      # every keras-hub variable set once, from KERAS_HUB below
    out = run(kh, cfg, **inputs)          # NumPy in, our output names out

Like `conformance.oracles.layers`, this maps canonical weights into a *library's* model, not
into one of our mirrors. Every keras-hub name and layout quirk lives in the family's `KerasHub`
table (`conformance.spec.families`: canonical module -> keras-hub layer path and leaves).
keras-hub keeps each attention projection per head, as `keras.layers.MultiHeadAttention`
does: query, key and value kernels `(D, H, Dh)` with biases `(H, Dh)`, the output kernel
`(H, Dh, D)`; the canonical `[in, out]` kernels are reshaped to those, never transposed.

Where keras-hub's numerics are its own (measured in `test_keras_hub.py`, each shown to be
exactly the named cause by rebuilding our reference with keras-hub's choice):

- GELU. `BertBackbone` hard-codes `gelu_approximate` (the tanh formula) in every layer;
  BERT as published in `transformers` and our `bert` presets use the exact erf GELU. This
  is the one difference visible in float32: the table's `numerics` names keras-hub's choice
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
- The LLaMA family (`LlamaBackbone`, `MistralBackbone`, `QwenBackbone`, `GemmaBackbone`).
  keras-hub's RMSNorm multiplies by the gain in float32 and casts once at the end, where
  transformers' Llama casts the normalized row back to the compute dtype first
  (`rms_norm_upcast="all"` against "statistic": the same number in float32 and float64,
  last-bit differences in bfloat16). Rotary cos and sin are computed in float32 (as
  transformers does). `GemmaBackbone` always scales scores by 1/sqrt(head_dim) (Gemma 2 27B's
  `query_pre_attn_scalar` cannot be expressed) and its blocks keep epsilon 1e-6. None of
  them take position_ids: positions are 0..T-1, so a left-padded batch is refused
  (`refusal` names the input), as are QK-norm and fused attention.
- Mixtral (`MixtralBackbone`): Mistral's numerics, and each layer's experts stacked in three
  (E, in, out) variables that the table addresses row by row ("P#e.leaf", `stacked`); it runs every
  expert on every token and weighs them by the same renormalized top-k routing (zero elsewhere).
- ViT (`ViTBackbone`): pre-norm, the exact GELU, the epsilon it is given (its own default and
  what its Hugging Face converter leaves it at: 1e-6, against transformers' 1e-12), images channels
  last; it ends at its final norm (no pooler), holds the position table of the one image size it
  was built for (no interpolation), and has one `use_mha_bias` for q, k, v and the output projection
  (a Hugging Face ViT with qkv_bias=false keeps its output bias: the converter drops it). In
  float64 its image input is a float32 `keras.Input` and its GELU divides by a float32 constant.
- Softmax dtype: keras-hub computes softmax and layer norm in at least float32 under any
  dtype policy; in float32 and float64 that is the compute dtype, so nothing changes here.
"""
from __future__ import annotations

import math
import os
import re
import numpy as np

from conformance import weights as weights_lib
from conformance.core.config import Config
from conformance.spec import families, registry
from conformance.spec.family import KerasHub
from conformance.spec.leaves import join, table_rows


def _keras_hub():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras_hub
    return keras_hub


def table(cfg: Config) -> KerasHub:
    """The keras-hub table of `cfg`'s family."""
    family = families.get(cfg.kind) if cfg.kind in families.FAMILIES else None
    found = None if family is None else family.keras_hub_table(cfg)
    if found is None:
        raise ValueError(_no_table(cfg))
    return found


def _no_table(cfg: Config) -> str:
    having = sorted(f"{f.name} ({', '.join(t.backbone for t in f.keras_hub)})"
                    for f in families.FAMILIES.values() if f.keras_hub)
    return (f"keras-hub oracles exist for {having}; received kind={cfg.kind!r}"
            + (f", checkpoint={cfg.checkpoint!r}" if cfg.checkpoint else ""))


def _numerics(cfg: Config) -> dict:
    """Config field -> the value keras-hub hard-codes (a table value may be a function of the Config)."""
    return {field: value(cfg) if callable(value) else value for field, value in table(cfg).numerics.items()}


def differences(cfg: Config) -> dict[str, tuple]:
    """Config field -> (ours, keras-hub's) for every numeric choice keras-hub hard-codes otherwise."""
    return {field: (getattr(cfg, field), value) for field, value in _numerics(cfg).items()
            if getattr(cfg, field) != value}


def numerics_config(cfg: Config) -> Config:
    """`cfg` with keras-hub's hard-coded numerics: the reference to hold keras-hub against exactly."""
    return cfg.replace(**_numerics(cfg))


def refusal(cfg: Config, inputs: dict | None = None) -> str | None:
    """Why keras-hub cannot run `cfg` (on `inputs`), or None: a Config field its backbone cannot
    express, or an input it has no argument for (its positions are always 0..T-1)."""
    family = families.get(cfg.kind) if cfg.kind in families.FAMILIES else None
    if family is None or family.keras_hub_table(cfg) is None:
        return _no_table(cfg)
    t = table(cfg)
    for field, value in t.required.items():
        value = value(cfg) if callable(value) else value  # a function of the Config: keras-hub's one layer count
        if getattr(cfg, field) != value:
            return f"keras-hub's {t.backbone} needs Config.{field}={value!r}; received {field}={getattr(cfg, field)!r}"
    for name, value in (inputs or {}).items():
        if name in t.inputs or value is None:
            continue
        ids = np.asarray(inputs["input_ids"])
        if name == "position_ids" and np.array_equal(value, np.broadcast_to(np.arange(ids.shape[1]), ids.shape)):
            continue
        return f"keras-hub's {t.backbone} takes {sorted(t.inputs)}; received {name}, which it cannot express"
    return None


def backbone(cfg: Config, dtype: str = "float32"):
    """A keras-hub backbone with `cfg`'s dimensions (random weights: call `load`)."""
    why = refusal(cfg)
    if why:
        raise ValueError(why)
    import keras
    dims = {k: keras.saving.get_registered_object(v) if isinstance(v, str) and ">" in v else v  # "package>name"
            for k, v in table(cfg).dims(cfg).items()}
    return getattr(_keras_hub().models, table(cfg).backbone)(**dims, dtype=dtype)


def variable_map(cfg: Config) -> dict[str, tuple]:
    """Canonical name -> (keras-hub variable path, leaf), for every parameter of `cfg` the backbone has
    (`KerasHub.absent` lists those it has not). A path that starts with "@" is a chain of Python
    attributes and list indices from the backbone to the variable (T5Backbone names both stacks'
    relative bias `self_attention/embeddings`, and its norms by a global counter)."""
    expected = registry.param_shapes(cfg)
    rows = {name: (join(path, leaf.external, "." if path.startswith("@") else "/"), leaf)
            for name, path, leaf in table_rows(table(cfg).modules, expected)}
    missing = sorted(expected.keys() - rows.keys() - set(table(cfg).absent))
    if missing:
        raise ValueError(f"no keras-hub variable for canonical weights {missing}")
    return rows


def seen(cfg: Config, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights as the backbone computes with them: those it has no variable for (`KerasHub.absent`:
    RoBERTa's segment row, a pooler) zeroed. A reference built on these is keras-hub's math."""
    absent = set(table(cfg).absent)
    return {name: np.zeros_like(v) if name in absent else v for name, v in w.items()}


def comparable(cfg: Config, outputs: dict, inputs: dict) -> dict:
    """`outputs` as keras-hub can be held to them: the outputs the backbone returns (`KerasHub.outputs`,
    and logits where it reverses the token embedding), and, where its outputs at padded positions are
    its own (`KerasHub.padded_positions` False: other positions, no query mask), those positions zeroed."""
    t = table(cfg)
    keys = set(t.outputs) | ({"logits"} if t.tied_logits else set())
    outputs = {k: v for k, v in outputs.items() if k in keys}
    mask = inputs.get("attention_mask")
    if t.padded_positions or mask is None:
        return outputs
    keep = np.asarray(mask) > 0                                                   # (B, T)
    return {k: np.where(keep.reshape(*keep.shape, *([1] * (np.ndim(v) - 2))), v, 0)
            if np.ndim(v) >= 2 and np.shape(v)[:2] == keep.shape else v for k, v in outputs.items()}
def stacked(path: str) -> tuple[str, int | None]:
    """("P.leaf", e) for a path "P#e.leaf" (or "/leaf"), row e of a variable that stacks several modules'
    tensors (keras-hub's Mixtral experts, (E, in, out)); (path, None) for any other path."""
    m = re.fullmatch(r"(.*)#(\d+)([./][^./]+)", path)
    return (m.group(1) + m.group(3), int(m.group(2))) if m else (path, None)


def _variable(model, path: str, by_path: dict):
    """The variable at `path`: an "@" chain of attributes and indices, else a variable path (a stacked
    variable's own, for "P#e/leaf"); None if absent."""
    path = stacked(path)[0]
    if not path.startswith("@"):
        return by_path.get(path)
    obj = model
    for part in path[1:].split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def load(model, cfg: Config, w: dict[str, np.ndarray]):
    """Assign the canonical weights `w` to keras-hub's variables; every variable exactly once."""
    weights_lib.check(cfg, w)
    by_path = {v.path: v for v in model.weights}
    rows = {name: (path, _variable(model, path, by_path), leaf) for name, (path, leaf) in variable_map(cfg).items()}
    unknown = sorted(path for path, v, _ in rows.values() if v is None)
    extra = set(extra_variables(model, cfg))
    unset = sorted(v.path for v in model.weights
                   if v.path not in extra and all(v is not found for _, found, _ in rows.values()))
    if unknown or unset:
        raise ValueError(f"keras-hub {table(cfg).backbone} variables do not line up with its table: "
                         f"not in the model {unknown}, never set {unset}")
    stacks = {}  # a stacked variable is assembled row by row, then assigned once
    for name, (path, v, leaf) in rows.items():
        value, row = leaf.to_external(w[name], cfg), stacked(path)[1]
        if row is None:
            v.assign(value.astype(v.dtype))
        else:
            stacks.setdefault(v.path, (v, np.array(v.numpy())))[1][row] = value
    for v, value in stacks.values():
        v.assign(value.astype(v.dtype))
    return model


def extra_variables(model, cfg: Config) -> list[str]:
    """The backbone's variable paths no canonical weight maps (`KerasHub.extra`: ELECTRA's pooled_dense)."""
    return [v.path for v in model.weights if v.path.startswith(tuple(f"{p}/" for p in table(cfg).extra))]


def export(model, cfg: Config) -> dict[str, np.ndarray]:
    """keras-hub's variables back under canonical names and layout (the inverse of `load`)."""
    by_path = {v.path: v for v in model.weights}
    def value(path):
        array, row = _variable(model, path, by_path).numpy(), stacked(path)[1]
        return array if row is None else array[row]
    return {name: leaf.to_canonical(value(path), cfg) for name, (path, leaf) in variable_map(cfg).items()}


def inputs(cfg: Config, **ours) -> dict[str, np.ndarray]:
    """Our input names -> keras-hub's (token_ids, padding_mask 1 = attend, ...); a left-out one
    gets the value the model would have used."""
    t = table(cfg)
    why = refusal(cfg, ours)
    if why:
        raise ValueError(why)
    out = {}
    for name, (theirs, default, *like) in t.inputs.items():  # like: the ids a default is shaped as
        value = ours.get(name)
        if value is None:
            shaped = np.asarray(ours[like[0]] if like else ours["input_ids"])
            value = np.ones_like(shaped) if default == "ones" else np.zeros_like(shaped)
        value = np.asarray(value)
        if name in t.layouts:
            value = value.transpose(t.layouts[name])
        out[theirs] = value.astype("float32" if np.issubdtype(value.dtype, np.floating) else "int32")  # ids, masks: int32
    return out


def forward(model, cfg: Config):
    """A function of keras-hub's input dict -> our output names, as tensors (for tf.function / XLA)."""
    t = table(cfg)

    def call(x):
        out = model(x if len(x) > 1 else next(iter(x.values())), training=False)  # one input: the tensor itself
        mine = {ours: out if theirs is None else out[theirs] for ours, theirs in t.outputs.items()}
        if t.tied_logits:  # (B, T, V): the backbone's token embedding reversed, as its CausalLM does
            h = mine["last_hidden_state"]
            if cfg.scale_logits:  # T5Seq2SeqLM: times D^-0.5 when the head is tied, as ours
                h = h * cfg.d_model ** -0.5
            mine["logits"] = model.token_embedding(h, reverse=True)
        return mine
    return call


def run(model, cfg: Config, **our_inputs) -> dict[str, np.ndarray]:
    """Run keras-hub on our inputs (input_ids, attention_mask, token_type_ids); NumPy out."""
    out = forward(model, cfg)(inputs(cfg, **our_inputs))
    return {k: np.asarray(v) for k, v in out.items()}


def exact_constants(model):
    """Replace the float32-rounded constants of keras-hub in float64 (see the docstring): the
    attention scale, stored as a float64 NumPy scalar (`tf.cast` keeps it exact); the tanh GELU of
    BERT's feed-forward, written with float64 constants; and the exact GELU of a `Dense(activation=
    "gelu")` (ViT's MLP: `tf.nn.gelu` divides by cast(1.4142135623730951), a float32 constant)."""
    import keras
    from keras import ops

    def gelu_tanh(x):
        return 0.5 * x * (1.0 + ops.tanh(math.sqrt(2.0 / math.pi) * (x + np.float64(0.044715) * x**3)))

    def gelu_erf(x):
        return 0.5 * x * (1.0 + ops.erf(x * np.float64(1.0 / math.sqrt(2.0))))

    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.MultiHeadAttention):
            layer._inverse_sqrt_key_dim = np.float64(1.0 / math.sqrt(layer._key_dim))
        if isinstance(layer, keras.layers.Dense) and layer.name == "feedforward_intermediate_dense":
            layer.activation = gelu_tanh
        elif isinstance(layer, keras.layers.Dense) and layer.activation is keras.activations.gelu:
            layer.activation = gelu_erf
    return model
