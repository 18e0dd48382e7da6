"""The one validator all three frameworks call on user input.

Two layers of checks, both here. `inputs` is the front door: `conformance.build`'s models pass
every call through it before any framework sees it, so what it refuses (an unknown or missing
input, None, a dtype outside the few accepted, a 0-D or empty array, a mask holding anything but
0 and 1, NaN or inf in a float input) is refused in the caller's own terms (the dtype they passed,
not the one after casting) and in the same words whichever framework runs. The rest take plain
Python values (a shape tuple, a dtype name, an int) and are called by the mirrors themselves, so
the NumPy, PyTorch and Keras modules raise the same `ValueError`, word for word, when called
directly too: what was wrong, what was expected, what was received. Nothing is silently broadcast.
"""
from __future__ import annotations

import json

import numpy as np

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
HALF_DTYPES = ("float16", "bfloat16")  # where RMSNorm's `rms_norm_upcast` computes in float32
INDEX_DTYPES = ("int32", "int64")      # ids and positions: what every framework's gather takes
MASK_DTYPES = ("bool",) + INDEX_DTYPES + FLOAT_DTYPES  # holding 0/1 (False/True) only
POSITION_TABLE = "max_positions: the sequence is longer than the position table"


def input_kind(name: str) -> str:
    """What a model input holds, by its name: "mask" (0/1: 1 = attend, or keep), "index" (integer ids
    or positions) or "float". A new family's inputs follow the same names (`*_mask`, `*_ids`, `*_positions`)."""
    if name.endswith("mask") or name == "keep":
        return "mask"
    if name.endswith(("ids", "positions")):
        return "index"
    return "float"


def inputs(owner: str, given: dict, signature: dict, check_finite: bool = True, partial: bool = False) -> dict:
    """The front door: `given` {name: array-like} checked against `signature` {name: required} of
    `owner` (the module's class name); returns {name: np.ndarray}, an optional input given as None
    left out. `partial`: a decoding step, which may leave out what its cache already holds."""
    for name in given:
        if name not in signature:
            raise ValueError(f"{owner} takes inputs {list(signature)}; received unknown input {name!r}")
    out = {name: array(name, value, check_finite) for name, value in given.items()
           if value is not None or signature[name]}
    required = [name for name, needed in signature.items() if needed]
    for name in required:
        if name not in out and not partial:
            raise ValueError(f"{owner} requires inputs {required}; received no {name!r} "
                             f"(given: {list(given) or 'none'})")
    return out


def array(arg: str, value, check_finite: bool = True) -> np.ndarray:
    """One input as a NumPy array, its dtype, rank, size and values checked for its `input_kind`; a mask
    comes back bool."""
    if value is None:
        raise ValueError(f"{arg} must be an array; received None")
    x = np.asarray(value)
    holds, dtype = input_kind(arg), "str" if x.dtype.kind in "US" else x.dtype.name
    if holds == "float":
        floating(arg, dtype)
    elif holds == "index":
        integer(arg, dtype)
    elif dtype not in MASK_DTYPES:
        raise ValueError(f"{arg} must be bool (True = attend) or 0/1 in {MASK_DTYPES[1:]}; received dtype {dtype}")
    if x.ndim == 0:
        raise ValueError(f"{arg} must be an array with a batch axis (rank >= 1); received a 0-D array")
    if x.size == 0:
        raise ValueError(f"{arg} must not be empty (every axis at least 1); received shape {x.shape}")
    if holds == "mask" and dtype != "bool":
        mask_values(arg, x)
        x = x != 0  # every framework gets a bool mask: no where() or & meets an int or a float one
    if holds == "float" and check_finite:
        finite(arg, x)
    return x


def mask_values(arg: str, mask: np.ndarray) -> None:
    """A mask holds 0 and 1 only: 2 or -1 is no polarity, 0.5 no decision, and NaN compares false to both."""
    other = ~((mask == 0) | (mask == 1))
    if other.any():
        values = np.unique(mask[other].astype(np.float64))
        shown = ", ".join(f"{v:g}" for v in values[:4]) + (", ..." if len(values) > 4 else "")
        raise ValueError(f"{arg} must hold only 0 and 1 (or False and True); received {int(other.sum())} other "
                         f"values: {shown}")


def finite(arg: str, x: np.ndarray) -> None:
    """No NaN or inf in a float input: the error names the first, instead of passing it on."""
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        nan = int(np.isnan(x).sum())
        raise ValueError(f"{arg} must be finite; received {nan} NaN and {int(bad.sum()) - nan} inf values, the first "
                         f"at index {first} (build(..., check_finite=False) lets them through)")


def shape_of(x) -> tuple:
    """The static shape; an axis with no int value yet (a dynamic axis of a traced tensor under
    tf.function or torch.export: None or a SymInt) is None, so it is never specialized here."""
    return tuple(None if d is None or type(d).__name__ == "SymInt" else int(d) for d in x.shape)


def dtype_name(x) -> str:
    """'float32', 'int64', 'bool', ... for a NumPy array, torch tensor or TF/Keras tensor."""
    name = str(x.dtype)
    for prefix in ("torch.", "<dtype: '"):
        name = name.removeprefix(prefix)
    return name.rstrip("'>")


def rank(arg: str, shape: tuple, expected: int, layout: str) -> None:
    if len(shape) != expected:
        raise ValueError(f"{arg} must have rank {expected} {layout}; received shape {shape}")


def shape(arg: str, actual: tuple, expected: tuple, layout: str) -> None:
    """`expected` may hold None for a free axis; an unknown (traced) axis in `actual` matches."""
    ok = len(actual) == len(expected) and all(e is None or a is None or a == e for a, e in zip(actual, expected))
    if not ok:
        want = tuple("*" if e is None else e for e in expected)
        raise ValueError(f"{arg} must have shape {layout} = {want}; received shape {actual}")


def floating(arg: str, dtype: str) -> None:
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"{arg} must be a floating dtype {FLOAT_DTYPES}; received dtype {dtype}")


def integer(arg: str, dtype: str) -> None:
    if dtype not in INDEX_DTYPES:
        raise ValueError(f"{arg} must hold integer ids; received dtype {dtype} (expected int32 or int64)")


def index_range(arg: str, lowest: int, highest: int, size: int, what: str) -> None:
    """Ids index a table of `size` rows: every one must lie in [0, size)."""
    if lowest < 0 or highest >= size:
        raise ValueError(
            f"{arg} must lie in [0, {size}) ({what}); received values in [{lowest}, {highest}]")


def from_zero(arg: str, lowest: int) -> None:
    """Positions count tokens from the first, so none is negative (an offset between two has no bound)."""
    if lowest < 0:
        raise ValueError(f"{arg} must be positions >= 0 (counted from the first token); received a minimum of {lowest}")


def boolean_mask(arg: str, actual: tuple, expected: tuple, layout: str, dtype: str) -> None:
    if dtype not in MASK_DTYPES:
        raise ValueError(f"{arg} must be bool (True = attend) or 0/1 in {MASK_DTYPES[1:]}; received dtype {dtype}")
    shape(arg, actual, expected, layout)


def same_dtype(arg: str, dtype: str, expected: str) -> None:
    if dtype != expected:
        raise ValueError(f"{arg} must have the model's dtype {expected}; received dtype {dtype}")


def last_axis(arg: str, actual: tuple, size: int, name: str) -> None:
    if not actual or actual[-1] != size:
        raise ValueError(f"{arg} must have last axis {name}={size} (..., {size}); "
                         f"received shape {actual}")


def spec(x):
    """(shape, dtype name) of a tensor from any framework, or None."""
    return None if x is None else (shape_of(x), dtype_name(x))


def attention_mask4(arg: str, mask, scores_shape: tuple) -> None:
    """A mask over (B, H, T, S) scores is (B, 1, T, S) or (B, H, T, S), True = attend."""
    B, H, T, S = scores_shape
    m_shape, m_dtype = mask
    heads = m_shape[1] if len(m_shape) == 4 and m_shape[1] in (1, H) else 1
    boolean_mask(arg, m_shape, (B, heads, T, S), "(B, 1 or H, T, S)", m_dtype)


def sdpa_inputs(q, k, v, mask) -> None:
    """q: (B, H, T, Dh)  k, v: (B, H, S, Dh)  mask: (B, 1 or H, T, S); each a `spec`."""
    for arg, (s, d) in (("q", q), ("k", k), ("v", v)):
        floating(arg, d)
        rank(arg, s, 4, "(B, H, T, Dh)")
    B, H, T, Dh = q[0]
    shape("k", k[0], (B, H, None, Dh), "(B, H, S, Dh)")
    shape("v", v[0], (B, H, k[0][2], Dh), "(B, H, S, Dh)")
    if mask is not None:
        attention_mask4("mask", mask, (B, H, T, k[0][2]))


def linear_attention_inputs(q, k, v, mask, causal: bool) -> None:
    """Linear and Performer attention: q, k, v as `sdpa_inputs`; a padding mask (B, S) only (the keys are
    summed before any query reads them: no (T, S) mask can apply); causal: T <= S queries, the last T or first T."""
    sdpa_inputs(q, k, v, None)
    (B, _, T, _), S = q[0], k[0][2]
    if mask is not None:
        boolean_mask("mask", mask[0], (B, S), "(B, S) padding", mask[1])
    if causal and T > S:
        raise ValueError(f"q must have at most as many positions as k in causal linear attention (each query "
                         f"reads the prefix sums up to its own key position); received T={T}, S={S}")


def attention_inputs(x, context, mask, past: int, d_model: int, kept: int | None = None) -> None:
    """Multi-head attention: x (B, T, D), context (B, S, D), padding mask (B, past + S); `kept`: the S keys
    a cross-attention's cache holds, when it is called without its context."""
    floating("x", x[1])
    rank("x", x[0], 3, "(B, T, D)")
    last_axis("x", x[0], d_model, "d_model")
    B, S = x[0][0], (x[0][1] if kept is None else kept)
    if context is not None:
        rank("context", context[0], 3, "(B, S, D)")
        shape("context", context[0], (B, None, d_model), "(B, S, D)")
        S = context[0][1]
    if mask is not None:
        boolean_mask("mask", mask[0], (B, _after(past, S)), "(B, S)", mask[1])


def disentangled_inputs(x, rel, mask, d_model: int, rows: int) -> None:
    """DeBERTa's attention: x (B, T, D), the relative table rel (2k, D), a padding mask (B, T)."""
    attention_inputs(x, None, mask, 0, d_model)
    floating("rel", rel[1])
    shape("rel", rel[0], (rows, d_model), "(2 relative_span, D)")


def token_inputs(input_ids, attention_mask=None, token_type_ids=None, past: int = 0,
                 prefix: str = "") -> None:
    """input_ids (B, T) ints; attention_mask (B, past + T); token_type_ids (B, T) ints."""
    integer(f"{prefix}input_ids", input_ids[1])
    rank(f"{prefix}input_ids", input_ids[0], 2, "(B, T)")
    B, T = input_ids[0]
    if attention_mask is not None:
        boolean_mask(f"{prefix}attention_mask", attention_mask[0], (B, _after(past, T)), "(B, T)",
                     attention_mask[1])
    if token_type_ids is not None:
        integer("token_type_ids", token_type_ids[1])
        shape("token_type_ids", token_type_ids[0], (B, T), "(B, T)")


def no_segments(arg: str) -> None:
    """A model without a segment table (DistilBERT, DeBERTa-v3: type_vocab_size 0) takes no segment ids."""
    raise ValueError(f"{arg} must be left out: the model has no segment embeddings (type_vocab_size=0); "
                     f"received {arg}")


def padding_at_the_ends(arg: str, ids, pad: int) -> None:
    """RoBERTa numbers positions by counting real tokens (`pad_positions`): padding is accepted before
    the first real token of a row or after its last, never between two real tokens. `ids` is (B, T),
    NumPy or anything `np.asarray` reads."""
    import numpy as np
    ids = np.asarray(ids)
    real = ids != pad
    count = real.astype(np.int64)  # counted as integers: torch.compile traces this NumPy as torch, whose cumsum takes no bool
    before = np.cumsum(count, axis=1) > 0                      # a real token at or before t
    after = np.cumsum(count[:, ::-1], axis=1)[:, ::-1] > 0     # a real token at or after t
    inside = ~real & before & after
    if inside.any():
        b, t = (int(i) for i in np.argwhere(inside)[0])
        raise ValueError(f"{arg} must hold the padding id {pad} only before the first or after the last real "
                         f"token of a row (positions count the real tokens, so a pad between two of them would "
                         f"shift the position of every token after it); received {pad} at row {b}, position {t}, "
                         f"between real tokens")


def _after(past: int, n):
    """past + n, or None for an unknown (traced) axis."""
    return None if n is None else past + n


def position_ids(arg: str, positions, ids_shape: tuple) -> None:
    """Explicit positions (B, T) integers, one per token of `input_ids`, never negative."""
    shape_, dtype = positions
    integer(arg, dtype)
    shape(arg, shape_, ids_shape, "(B, T) like input_ids")


def rotary_inputs(q, k, position_ids, head_dim: int) -> None:
    """The rotary embedding: q (B, H, T, Dh), k (B, KV, T, Dh), position_ids (B, T) ints; each a `spec`."""
    for arg, (s, d) in (("q", q), ("k", k)):
        floating(arg, d)
        rank(arg, s, 4, "(B, H, T, Dh)" if arg == "q" else "(B, KV, T, Dh)")
    last_axis("q", q[0], head_dim, "head_dim")
    B, _, T, Dh = q[0]
    shape("k", k[0], (B, None, T, Dh), "(B, KV, T, Dh)")
    integer("position_ids", position_ids[1])
    shape("position_ids", position_ids[0], (B, T), "(B, T)")
    if T == 0:
        raise ValueError(f"position_ids must hold at least one position (B, T) with T >= 1; "
                         f"received shape {position_ids[0]}")


def rotary_positions(lowest: int, highest: int, max_positions: int, rope_scaling: str) -> None:
    """Positions are >= 0; without a rope scaling, also below `max_positions` (the trained context)."""
    if rope_scaling == "none" and (lowest < 0 or highest >= max_positions):
        raise ValueError(f"position_ids must lie in [0, max_positions) = [0, {max_positions}) (rope_scaling='none' "
                         f"rotates only the positions it was trained on: a longer context needs a rope_scaling); "
                         f"received values in [{lowest}, {highest}]")
    if lowest < 0:
        raise ValueError(f"position_ids must be >= 0; received values in [{lowest}, {highest}]")


def pixel_values(images, num_channels: int, patch_size: int, interpolate: bool) -> None:
    """Images (B, C, H, W), channels first (transformers' layout), floating, C = num_channels, and H and W
    multiples of the patch size, or with `interpolate` (the position grid is resized, the remainder dropped)
    at least one patch. Channels last (B, H, W, C) is recognized by its last axis and named."""
    shape_, dtype = images
    floating("pixel_values", dtype)
    rank("pixel_values", shape_, 4, "(B, C, H, W)")
    C = num_channels
    if shape_[1] != C and shape_[3] == C:
        raise ValueError(f"pixel_values must be channels first (B, C, H, W) with C = num_channels = {C} on axis 1; "
                         f"received shape {shape_}, which is channels last (B, H, W, C): transpose it with "
                         f"(0, 3, 1, 2)")
    if shape_[1] is not None and shape_[1] != C:
        raise ValueError(f"pixel_values must have num_channels = {C} channels on axis 1 (B, C, H, W); "
                         f"received shape {shape_}")
    H, W = shape_[2:]
    if H is None or W is None:
        return
    P = patch_size
    if interpolate and (H < P or W < P):
        raise ValueError(f"pixel_values height and width must be at least patch_size = {P} (B, C, H, W); "
                         f"received shape {shape_}")
    if not interpolate and (H % P or W % P):
        raise ValueError(f"pixel_values height and width must be multiples of patch_size = {P} (B, C, H, W), or "
                         f"interpolate_pos_encoding=True (which drops the remainder); received shape {shape_}")


def image_size(images, image_size_: int, patch_size: int, interpolate: bool) -> None:
    """Without `interpolate` an image is the size the position table was made for: image_size square."""
    shape_ = images[0]
    S, n = image_size_, image_size_ // patch_size
    if not interpolate and None not in shape_[2:] and shape_[2:] != (S, S):
        raise ValueError(f"pixel_values must be image_size x image_size = {S} x {S} (B, C, {S}, {S}): the position "
                         f"table holds {n} x {n} patches and [CLS] (interpolate_pos_encoding=True resizes it); "
                         f"received shape {shape_}")


def relative_positions(query_positions, key_positions) -> None:
    """The relative position bias: query_positions (T,) and key_positions (S,) integers; each a `spec`."""
    for arg, (s, d) in (("query_positions", query_positions), ("key_positions", key_positions)):
        integer(arg, d)
        rank(arg, s, 1, "(T,)" if arg == "query_positions" else "(S,)")


def position_bias(bias, scores_shape: tuple) -> None:
    """An additive bias over (B, H, T, S) scores is (1 or B, H, T, S), floating; `bias` a `spec`."""
    B, H, T, S = scores_shape
    b_shape, b_dtype = bias
    floating("position_bias", b_dtype)
    rank("position_bias", b_shape, 4, "(1 or B, H, T, S)")
    batch = b_shape[0] if b_shape[0] in (1, B) else B
    shape("position_bias", b_shape, (batch, H, T, S), "(1 or B, H, T, S)")


def decoder_inputs(decoder_input_ids, kind: str, head: str) -> None:
    """An encoder-decoder with an LM head needs the decoder's input, its target shifted right; the encoder
    alone (head="encoder") takes none."""
    if head == "encoder" and decoder_input_ids is not None:
        raise ValueError(f"decoder_input_ids must be None for the {kind} encoder alone (head='encoder'); received "
                         f"an array of shape {shape_of(decoder_input_ids)}")
    if head != "encoder" and decoder_input_ids is None:
        raise ValueError(f"decoder_input_ids must be given to the {kind} encoder-decoder (the target, starting "
                         f"with the decoder start token: the head predicts each next token); received None "
                         f"(for the encoder alone use head='encoder')")
def saved_model(where: str, saved_class: str, saved_fields: dict, cls: str, fields: dict) -> None:
    """A saved Keras twin (a .keras file, a from_config dict) loads only into the class and Config it
    was saved from: otherwise name the class, or the Config fields that differ, both ways."""
    if saved_class != cls:
        raise ValueError(f"{where} holds a tf_impl.{saved_class}; it cannot load into a tf_impl.{cls} "
                         f"(load it with keras.saving.load_model, or build a tf_impl.{saved_class})")
    saved_fields, fields = json.loads(json.dumps(saved_fields)), json.loads(json.dumps(fields))  # a tuple is a list
    differ = [f"{k}={saved_fields.get(k)!r} (this model: {fields.get(k)!r})" for k in sorted(saved_fields.keys()
              | fields.keys()) if saved_fields.get(k) != fields.get(k)]
    if differ:
        raise ValueError(f"{where} was saved from another config of tf_impl.{cls}; it holds "
                         + ", ".join(differ[:6]) + (f" and {len(differ) - 6} more" if len(differ) > 6 else ""))


def linear_layers(owner: str, found: int) -> None:
    """`weight_quantization='int8'` quantizes the kernels of Linear layers: a module with none (a norm, a
    softmax, an embedding) has nothing to quantize, and an int8 build of it would be a float build that says int8."""
    if not found:
        raise ValueError(f"weight_quantization='int8' quantizes the kernels of Linear layers: expected a module "
                         f"with at least one Linear; received {owner}, which has none (build it with "
                         f"weight_quantization='none')")
