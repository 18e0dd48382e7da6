"""Mirrors `numpy_ref.vit`.

Differs: the layers are an `nn.ModuleList`; the [CLS] row and the position table are parameters
under their canonical names; the resize matrices are computed in float64 on the table's device and
cast to its dtype (`torch.nn.functional.interpolate(mode="bicubic")` computes the same resize:
`conformance/suites/test_vit.py` holds the two equal).
"""
import math

import torch
from torch import nn

from conformance.core import checks, trace
from torch_impl.activations import Dropout
from torch_impl.blocks import EncoderLayer
from torch_impl.linear import Linear
from torch_impl.normalization import LayerNorm
from torch_impl.patch_embedding import PatchEmbedding


def cubic_weights(t, a):
    """(n,) offsets t in [0, 1) past the left neighbour -> (n, 4): Keys' kernel W at distances 1 + t, t,
    1 - t and 2 - t, the weights of the taps at -1, 0, 1 and 2."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], dim=-1)  # (n, 4)


def bicubic_matrix(n_in, n_out, a=-0.75, edges="clamp", device=None):
    """(n_out, n_in): a 1-D bicubic resize from n_in samples to n_out as a matrix, half-pixel centres."""
    source = (torch.arange(n_out, dtype=torch.float64, device=device) + 0.5) * (n_in / n_out) - 0.5  # (n_out,)
    left = torch.floor(source)                                                 # (n_out,)
    weights = cubic_weights(source - left, a)                                  # (n_out, 4)
    taps = left.long()[:, None] + torch.arange(-1, 3, device=device)           # (n_out, 4)
    if edges == "drop":
        weights = torch.where((taps >= 0) & (taps < n_in), weights, 0.0)      # (n_out, 4)
        weights = weights / weights.sum(dim=-1, keepdim=True)                 # (n_out, 4)
    reads = torch.clamp(taps, 0, n_in - 1)[..., None] == torch.arange(n_in, device=device)  # (n_out, 4, n_in)
    return (weights[..., None] * reads).sum(dim=1)                             # (n_out, n_in)


def bicubic_resize(grid, h, w, a=-0.75, edges="clamp"):
    """grid (n, m, D) -> (h, w, D): the rows resized, then the columns (separable)."""
    n, m, D = grid.shape
    rows = bicubic_matrix(n, h, a, edges, grid.device).to(grid.dtype)          # (h, n)
    cols = bicubic_matrix(m, w, a, edges, grid.device).to(grid.dtype)          # (w, m)
    x = (rows @ grid.reshape(n, m * D)).reshape(h, m, D)                       # (h, m, D)
    return cols @ x                                                            # (h, w, D)


def interpolate_positions(table, h, w):
    """(1 + n n, D) -> (1 + h w, D): [CLS]'s row kept, the n x n grid of patch positions resized to h x w."""
    n = math.isqrt(table.shape[0] - 1)
    grid = table[1:].reshape(n, n, -1)                                         # (n, n, D)
    grid = bicubic_resize(grid, h, w)                                          # (h, w, D)
    return torch.cat([table[:1], grid.reshape(h * w, -1)], dim=0)              # (1 + h w, D)


class ViTEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.patch_size, self.interpolate = cfg.patch_size, cfg.interpolate_pos_encoding
        grid = cfg.image_size // cfg.patch_size
        self.patch = PatchEmbedding(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, cfg.d_model))
        self.positions = nn.Parameter(torch.zeros(1 + grid * grid, cfg.d_model))
        self.dropout = Dropout(cfg)

    def forward(self, pixel_values):
        """pixel_values: (B, C, H, W) -> (B, 1 + N, D): [CLS] and the patches, positions added."""
        tap = trace.tap_for(self)
        x = self.patch(pixel_values)                                           # (B, N, D)
        B, _, D = x.shape
        cls = self.cls_token.expand(B, 1, D)                                   # (B, 1, D)
        x = torch.cat([cls, x], dim=1)                                         # (B, 1 + N, D)
        positions = self.positions                                             # (1 + N, D)
        if self.interpolate:
            P = self.patch_size
            H, W = pixel_values.shape[2:]
            positions = tap("positions", interpolate_positions(positions, H // P, W // P))  # (1 + N, D)
        return tap("output", self.dropout(x + positions))                      # (B, 1 + N, D)


class ViT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embeddings = ViTEmbeddings(cfg)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))
        self.final_norm = LayerNorm(cfg)
        self.pooler = Linear(cfg.d_model, cfg.d_model) if cfg.head == "none" and cfg.pooler else None
        self.classifier = Linear(cfg.d_model, cfg.num_labels) if cfg.head == "classification" else None

    def forward(self, pixel_values):
        """pixel_values: (B, C, H, W), channels first, floating."""
        cfg = self.cfg
        checks.pixel_values(checks.spec(pixel_values), cfg.num_channels, cfg.patch_size, cfg.interpolate_pos_encoding)
        checks.image_size(checks.spec(pixel_values), cfg.image_size, cfg.patch_size, cfg.interpolate_pos_encoding)
        tap = trace.tap_for(self)
        h = self.embeddings(pixel_values)                                      # (B, 1 + N, D)
        for layer in self.layers:
            h = layer(h)                                                       # (B, 1 + N, D)
        h = self.final_norm(h)                                                 # (B, 1 + N, D)
        out = {"last_hidden_state": h}
        if self.pooler is not None:
            out["pooled_output"] = tap("pooled", torch.tanh(self.pooler(h[:, 0])))  # (B, D)
        if self.classifier is not None:
            out["logits"] = tap("logits", self.classifier(h[:, 0]))           # (B, num_labels)
        return out
