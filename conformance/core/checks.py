"""The one validator all three frameworks call on user input.

Every check takes plain Python values (a shape tuple, a dtype name, an int), so the
NumPy, PyTorch and Keras mirrors raise the same `ValueError`, word for word: what was
wrong, what was expected, what was received. Nothing is silently broadcast.
"""
from __future__ import annotations

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
HALF_DTYPES = ("float16", "bfloat16")  # where RMSNorm's `rms_norm_upcast` computes in float32


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
    if not (dtype.startswith("int") or dtype.startswith("uint")):
        raise ValueError(f"{arg} must hold integer ids; received dtype {dtype}")


def index_range(arg: str, lowest: int, highest: int, size: int, what: str) -> None:
    """Ids index a table of `size` rows: every one must lie in [0, size)."""
    if lowest < 0 or highest >= size:
        raise ValueError(
            f"{arg} must lie in [0, {size}) ({what}); received values in [{lowest}, {highest}]")


def boolean_mask(arg: str, actual: tuple, expected: tuple, layout: str, dtype: str) -> None:
    if dtype != "bool" and not dtype.startswith("int") and not dtype.startswith("float"):
        raise ValueError(f"{arg} must be bool (True = attend) or 0/1; received dtype {dtype}")
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
