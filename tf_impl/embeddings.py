"""Mirrors `numpy_ref.embeddings`.

Differs: the table (RandomNormal(stddev=0.02)) is a Keras weight made in `__init__` and the
lookup is `keras.ops.take`; ids are not autocast to the layer's dtype (`autocast = False`, as in
`keras.layers.Embedding`), so a float id array is reported with its own dtype. The checks of id
values (in range, >= 0) run only on concrete tensors (`tf_impl._layer.is_symbolic`): under
`tf.function` or XLA an id out of range is not caught here. `sinusoidal_encoding` is computed
and returned in float64 with `keras.ops`.
"""
from keras import ops
from keras.initializers import RandomNormal

from conformance.core import checks, trace
from tf_impl._layer import Layer, is_symbolic


class Embedding(Layer):
    def __init__(self, num: int, d_model: int, arg: str, what: str, **kwargs):
        super().__init__(**kwargs)
        self.autocast = False  # as keras.layers.Embedding: ids are checked as given, never cast
        self.num, self.arg, self.what = num, arg, what
        self.table = self.add_weight(shape=(num, d_model), name="table",
                                     initializer=RandomNormal(stddev=0.02))

    def call(self, ids):
        checks.integer(self.arg, checks.dtype_name(ids))
        if not is_symbolic(ids) and ops.size(ids):
            checks.index_range(self.arg, int(ops.min(ids)), int(ops.max(ids)), self.num, self.what)
        return trace.tap_for(self)("output", ops.take(self.table, ids, axis=0))  # (*ids.shape, D)


class TokenEmbedding(Embedding):
    def __init__(self, cfg, d=None, **kwargs):
        super().__init__(cfg.vocab_size, d or cfg.d_model, "input_ids", "vocab_size", **kwargs)
        self.cfg = cfg


class PositionEmbedding(Embedding):
    def __init__(self, cfg, d=None, **kwargs):
        super().__init__(cfg.max_positions, d or cfg.d_model, "position_ids", checks.POSITION_TABLE, **kwargs)
        self.cfg = cfg


class SegmentEmbedding(Embedding):
    def __init__(self, cfg, d=None, **kwargs):
        super().__init__(cfg.type_vocab_size, d or cfg.d_model, "token_type_ids", "type_vocab_size",
                         **kwargs)
        self.cfg = cfg


class RelativeEmbedding(Embedding):
    """DeBERTa's relative table: 2k rows, one a relative distance (or bucket) from -k to k - 1."""

    def __init__(self, cfg, **kwargs):
        super().__init__(2 * cfg.relative_span, cfg.d_model, "relative_ids", "2 relative_span", **kwargs)
        self.cfg = cfg


def sinusoidal_encoding(positions, d_model):
    """positions (...) int -> (..., D) float64."""
    inv_freq = 1.0 / 10000 ** (ops.arange(0, d_model, 2, dtype="float64") / d_model)  # (D/2,)
    angles = ops.cast(positions, "float64")[..., None] * inv_freq                      # (..., D/2)
    pe = ops.stack([ops.sin(angles), ops.cos(angles)], axis=-1)                        # (..., D/2, 2)
    return ops.reshape(pe, (*ops.shape(positions), d_model))                           # (..., D)


class SinusoidalPositionalEncoding(Layer):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.autocast = False
        self.d_model, self.max_positions = cfg.d_model, cfg.max_positions

    def call(self, positions):
        checks.integer("position_ids", checks.dtype_name(positions))
        if not is_symbolic(positions) and ops.size(positions):
            checks.index_range("position_ids", int(ops.min(positions)), int(ops.max(positions)), self.max_positions,
                               checks.POSITION_TABLE)
        pe = sinusoidal_encoding(positions, self.d_model)  # float64: callers cast
        return trace.tap_for(self)("output", pe)  # (*positions.shape, D)
