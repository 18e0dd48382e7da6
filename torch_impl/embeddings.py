"""Mirrors `numpy_ref.embeddings`.

Differs: `Embedding` subclasses `nn.Embedding` (the table is `weight`) and looks up with
`F.embedding`, which takes int32 / int64 ids only. The checks of id values (in range, >= 0)
are skipped while `torch.export` traces (`torch.compiler.is_exporting()`), as the Keras twin
skips them on symbolic tensors: an exported graph does not check ids. The sinusoidal
encoding is computed in `torch.float64` on the positions' device.
"""
import torch
import torch.nn.functional as F
from torch import nn

from conformance.core import checks, trace


class Embedding(nn.Embedding):
    def __init__(self, num: int, d_model: int, arg: str, what: str):
        super().__init__(num, d_model)
        self.num, self.arg, self.what = num, arg, what

    def forward(self, ids):
        checks.integer(self.arg, checks.dtype_name(ids))
        if ids.numel() and not torch.compiler.is_exporting():  # a traced id has no value to check
            checks.index_range(self.arg, int(ids.min()), int(ids.max()), self.num, self.what)
        return trace.tap_for(self)("output", F.embedding(ids, self.weight))  # (*ids.shape, D)


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
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64, device=positions.device)
    inv_freq = 1.0 / 10000 ** (two_i / d_model)                               # (D/2,)
    angles = positions[..., None] * inv_freq                                  # (..., D/2)
    pe = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1)          # (..., D/2, 2)
    return pe.reshape(*positions.shape, d_model)                              # (..., D)


class SinusoidalPositionalEncoding(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.d_model, self.max_positions = cfg.d_model, cfg.max_positions

    def forward(self, positions):
        checks.integer("position_ids", checks.dtype_name(positions))
        if positions.numel() and not torch.compiler.is_exporting():
            checks.index_range("position_ids", int(positions.min()), int(positions.max()), self.max_positions,
                               checks.POSITION_TABLE)
        pe = sinusoidal_encoding(positions, self.d_model)  # float64: callers cast
        return trace.tap_for(self)("output", pe)  # (*positions.shape, D)
