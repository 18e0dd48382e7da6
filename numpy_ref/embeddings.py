"""Token, learned-position and segment embeddings, and the sinusoidal encoding.

An embedding is a table lookup: row `i` of a (num, D) table for id `i`. Token, position
and segment embeddings differ only in what indexes them (token ids, positions
0..T-1, segment ids) and how many rows they have, so they are one class. An id
outside the table is an error naming the argument, never a wrapped or clipped index.

The 2017 paper's fixed encoding needs no table:
    PE(pos, 2i)   = sin(pos / 10000^(2i/D))
    PE(pos, 2i+1) = cos(pos / 10000^(2i/D))
Each pair of channels is a rotation at its own frequency, so PE(pos + k) is a linear
function of PE(pos) for every offset k.
"""
import numpy as np

from conformance.core import checks, trace
from numpy_ref import autograd
from numpy_ref._module import Module


class Embedding(Module):
    def __init__(self, num: int, d_model: int, arg: str, what: str):
        super().__init__()
        self.num, self.arg, self.what = num, arg, what
        self.table = self.param("table", num, d_model)

    def forward(self, ids):
        checks.integer(self.arg, checks.dtype_name(ids))
        if ids.size:
            checks.index_range(self.arg, int(ids.min()), int(ids.max()), self.num, self.what)
        return trace.tap_for(self)("output", self.table[ids])  # (*ids.shape, D)

    def flops(self, ids, **_):
        """A gather: no arithmetic."""
        return iter(())

    def backward(self, grad):
        """Ids are integers: nothing to return; the table gets `embedding_backward`."""
        saved = autograd.saved(self)
        grad = saved.tap("output", grad)                                     # (*ids.shape, D)
        autograd.accumulate(self, "table", embedding_backward(grad, saved.inputs["ids"], self.num))


def embedding_backward(grad, ids, num):
    """d table: row i gets the sum of dy over every position whose id is i; rows not looked up get 0.

    `np.add.at` and not `d_table[ids] += grad`: with repeated ids the fancy-index `+=`
    writes each row once (the last position wins), `add.at` adds every occurrence.
    """
    d_table = np.zeros((num, grad.shape[-1]), grad.dtype)                # (num, D)
    np.add.at(d_table, ids, grad)
    return d_table


def tied_logits_backward(grad, h, table):
    """logits = h E^T (the output head tied to the token table E (V, D)):

        dh = dlogits E          dE = dlogits^T h, summed over positions

    Unlike the lookup's sparse rows, every row of E gets gradient here; a tied table's
    gradient is the sum of both uses. Returns (dh, dE).
    """
    V, D = table.shape
    d_h = grad @ table                                                   # (..., D)
    d_table = grad.reshape(-1, V).T @ h.reshape(-1, D)                   # (V, D)
    return d_h, d_table


class TokenEmbedding(Embedding):
    def __init__(self, cfg, d=None):
        super().__init__(cfg.vocab_size, d or cfg.d_model, "input_ids", "vocab_size")


class PositionEmbedding(Embedding):
    def __init__(self, cfg, d=None):
        super().__init__(cfg.max_positions, d or cfg.d_model, "position_ids", checks.POSITION_TABLE)


class SegmentEmbedding(Embedding):
    def __init__(self, cfg, d=None):
        super().__init__(cfg.type_vocab_size, d or cfg.d_model, "token_type_ids", "type_vocab_size")


class RelativeEmbedding(Embedding):
    """DeBERTa's relative table: 2k rows, one a relative distance (or bucket) from -k to k - 1."""

    def __init__(self, cfg):
        super().__init__(2 * cfg.relative_span, cfg.d_model, "relative_ids", "2 relative_span")


def sinusoidal_encoding(positions, d_model):
    """positions (...) int -> (..., D) float64."""
    inv_freq = 1.0 / 10000 ** (np.arange(0, d_model, 2) / d_model)   # (D/2,)
    angles = positions[..., None] * inv_freq                          # (..., D/2)
    pe = np.stack([np.sin(angles), np.cos(angles)], axis=-1)          # (..., D/2, 2)
    return pe.reshape(*positions.shape, d_model)                      # (..., D)


class SinusoidalPositionalEncoding(Module):
    constant_taps = ("output",)  # a function of the integer positions alone: no gradient anywhere

    def __init__(self, cfg):
        super().__init__()
        self.d_model, self.max_positions = cfg.d_model, cfg.max_positions

    def forward(self, positions):
        checks.integer("position_ids", checks.dtype_name(positions))
        if positions.size:  # defined at any position, but a model accepts max_positions, as with a table
            checks.index_range("position_ids", int(positions.min()), int(positions.max()), self.max_positions,
                               checks.POSITION_TABLE)
        pe = sinusoidal_encoding(positions, self.d_model)  # float64: callers cast
        return trace.tap_for(self)("output", pe)  # (*positions.shape, D)

    def flops(self, positions, **_):
        """O(T D) sines and cosines with no weights: not counted."""
        return iter(())

    def backward(self, grad):
        """A constant: no weights, integer positions. Consumes its call and returns nothing."""
        autograd.saved(self)
