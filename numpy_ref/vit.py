"""The Vision Transformer (Dosovitskiy et al. 2020): an image as a sequence of patch tokens, a
learned [CLS] token in front, learned positions, and the pre-norm encoder of GPT-2 without
its mask.

    h0 = [cls; PatchEmbedding(image)] + E_position    (B, 1 + N, D), N = (H / P) (W / P)
    h_l = h + Attention(LN(h)),  h + FFN(LN(h))      (every token sees every token; exact GELU)
    h = LN_final(h_L)                                 last_hidden_state
    pooled = tanh(h[:, 0] W_pool + b_pool)            ViTModel's pooler (head "none")
    logits = h[:, 0] W_cls + b_cls                    ViTForImageClassification (head
                                                      "classification"): [CLS]'s row, no pooler

The [CLS] token has no pixels of its own: it is a learned row that attends to every patch, and
its final state stands for the whole image. Images enter channels first, (B, C, H, W), as
transformers takes them (`numpy_ref.patch_embedding`).

Another resolution (`interpolate_pos_encoding`, as transformers' argument of that name): the
position table holds one row per patch of an n x n grid, n = image_size / P, and [CLS]'s
row. For an image cut into an h x w grid the n x n rows are resized to h x w as an image of
D channels, bicubic with half-pixel centres, and [CLS]'s row is kept. The resize is
separable: one (h, n) matrix mixes rows, one (w, n) matrix columns (`bicubic_matrix`). Each
output sample at source position s takes the four input samples floor(s) - 1 .. floor(s) +
2, weighted by Keys' cubic convolution kernel with coefficient a:

    W(x) = (a + 2)|x|^3 - (a + 3)|x|^2 + 1        |x| <= 1
    W(x) = a|x|^3 - 5a|x|^2 + 8a|x| - 4a          1 < |x| < 2

torch (and so transformers) uses a = -0.75 and reads a tap past the edge as the edge sample;
TensorFlow's `tf.image.resize(method="bicubic")` (and `keras.ops.image.resize` on
TensorFlow) uses a = -0.5 (Keys' own choice) and drops such taps, renormalizing the other
weights. The reference follows torch, which is what transformers computes; both are
`bicubic_matrix`'s options, and `conformance/suites/test_vit.py` measures them: on a 14 x 14
grid of N(0, 1) resized to 16 x 16 the two resizers differ by up to 0.26, a = -0.5 alone
accounting for it and the edge rule for 0.07 at the borders.

Parameters (ViT-Base/16 at 224): the patch kernel 16 16 3 768 + 768 = 590,592, [CLS] 768,
positions 197 x 768 = 151,296, each layer 7,087,872 (BERT's), the final norm 1,536, the
pooler 590,592: 86,389,248 as ViTModel; ViTForImageClassification has no pooler and a
1000-class head (769,000): 86,567,656. FLOPs per image: 2 N P^2 C D for the patches (0.23 G)
and twelve pre-norm layers on 197 tokens (34.9 G): 35.1 GFLOPs of matmuls, the "17.6 G"
(multiply-adds) usually quoted.
"""
import math

import numpy as np

from conformance.core import checks, trace
from conformance.core.costs import PER_ELEMENT, Op, Saved, scoped
from numpy_ref import autograd
from numpy_ref._module import Module
from numpy_ref.activations import Dropout
from numpy_ref.bert import tanh_backward
from numpy_ref.blocks import EncoderLayer
from numpy_ref.linear import Linear
from numpy_ref.normalization import LayerNorm
from numpy_ref.patch_embedding import PatchEmbedding


def cubic_weights(t, a):
    """(n,) offsets t in [0, 1) past the left neighbour -> (n, 4): Keys' kernel W at distances 1 + t, t,
    1 - t and 2 - t, the weights of the taps at -1, 0, 1 and 2."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)   # (n, 4)


def bicubic_matrix(n_in, n_out, a=-0.75, edges="clamp"):
    """(n_out, n_in): a 1-D bicubic resize from n_in samples to n_out as a matrix, half-pixel centres
    (align_corners=False): output i samples the input at s = (i + 0.5) n_in / n_out - 0.5.

    a=-0.75, edges="clamp": torch's `interpolate(mode="bicubic")`, a tap past the edge reads the edge.
    a=-0.5, edges="drop": TensorFlow's `resize(method="bicubic")`, such a tap gets weight 0 and the other
    weights are renormalized to sum to 1."""
    source = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5                   # (n_out,)
    left = np.floor(source)                                                    # (n_out,)
    weights = cubic_weights(source - left, a)                                  # (n_out, 4)
    taps = left.astype(np.int64)[:, None] + np.arange(-1, 3)                   # (n_out, 4)
    if edges == "drop":
        weights = np.where((taps >= 0) & (taps < n_in), weights, 0.0)         # (n_out, 4)
        weights = weights / weights.sum(axis=-1, keepdims=True)               # (n_out, 4)
    reads = np.clip(taps, 0, n_in - 1)[..., None] == np.arange(n_in)           # (n_out, 4, n_in)
    return (weights[..., None] * reads).sum(axis=1)                            # (n_out, n_in)


def bicubic_resize(grid, h, w, a=-0.75, edges="clamp"):
    """grid (n, m, D) -> (h, w, D): the rows resized, then the columns (separable)."""
    n, m, D = grid.shape
    rows = bicubic_matrix(n, h, a, edges).astype(grid.dtype)                   # (h, n)
    cols = bicubic_matrix(m, w, a, edges).astype(grid.dtype)                   # (w, m)
    x = (rows @ grid.reshape(n, m * D)).reshape(h, m, D)                       # (h, m, D)
    return cols @ x                                                            # (h, w, D)


def interpolate_positions(table, h, w):
    """(1 + n n, D) -> (1 + h w, D): [CLS]'s row kept, the n x n grid of patch positions resized to h x w."""
    n = math.isqrt(table.shape[0] - 1)
    grid = table[1:].reshape(n, n, -1)                                         # (n, n, D)
    grid = bicubic_resize(grid, h, w)                                          # (h, w, D)
    return np.concatenate([table[:1], grid.reshape(h * w, -1)], axis=0)        # (1 + h w, D)


def interpolate_positions_backward(grad, table, h, w):
    """The resize is linear, y = cols (rows G): dG = rows^T (cols^T dy), row by row of the output grid."""
    n, D = math.isqrt(table.shape[0] - 1), table.shape[1]
    rows = bicubic_matrix(n, h).astype(grad.dtype)                             # (h, n)
    cols = bicubic_matrix(n, w).astype(grad.dtype)                             # (w, n)
    d_x = cols.T @ grad[1:].reshape(h, w, D)                                   # (h, n, D)
    d_grid = rows.T @ d_x.reshape(h, n * D)                                    # (n, n D)
    return np.concatenate([grad[:1], d_grid.reshape(n * n, D)], axis=0)        # (1 + n n, D)


class ViTEmbeddings(Module):
    def __init__(self, cfg):
        super().__init__()
        self.patch_size, self.interpolate = cfg.patch_size, cfg.interpolate_pos_encoding
        grid = cfg.image_size // cfg.patch_size
        self.patch = PatchEmbedding(cfg)
        self.cls_token = self.param("cls_token", 1, cfg.d_model)
        self.positions = self.param("positions", 1 + grid * grid, cfg.d_model)
        self.dropout = Dropout(cfg)

    def forward(self, pixel_values):
        """pixel_values: (B, C, H, W) -> (B, 1 + N, D): [CLS] and the patches, positions added."""
        tap = trace.tap_for(self)
        x = self.patch(pixel_values)                                           # (B, N, D)
        B, _, D = x.shape
        cls = np.broadcast_to(self.cls_token, (B, 1, D))                       # (B, 1, D)
        x = np.concatenate([cls, x], axis=1)                                   # (B, 1 + N, D)
        positions = self.positions                                             # (1 + N, D)
        if self.interpolate:
            P = self.patch_size
            H, W = pixel_values.shape[2:]
            positions = tap("positions", interpolate_positions(positions, H // P, W // P))  # (1 + N, D)
        return tap("output", self.dropout(x + positions))                      # (B, 1 + N, D)

    def flops(self, pixel_values, **_):
        B, _, H, W = pixel_values
        P, n, D = self.patch_size, math.isqrt(self.positions.shape[0] - 1), self.positions.shape[1]
        h, w = H // P, W // P
        yield from scoped("patch", self.patch.flops(pixel_values))
        if self.interpolate:  # two matmuls with the resize matrices: counted with the matmuls
            yield Op("positions.rows", "projection", 2 * h * n * n * D)
            yield Op("positions.columns", "projection", 2 * h * w * n * D)
        yield Op("positions.add", "elementwise", B * (1 + h * w) * D * PER_ELEMENT["embedding_add"])

    def saved(self, f, pixel_values, **_):
        B, _, H, W = pixel_values
        P, n, D = self.patch_size, math.isqrt(self.positions.shape[0] - 1), self.positions.shape[1]
        h, w = H // P, W // P
        yield from scoped("patch", self.patch.saved(f, pixel_values))
        if self.interpolate:
            yield Saved("positions", "resize matrices", (h * n + w * n) * f)
        yield from scoped("dropout", self.dropout.saved(f, (B, 1 + h * w, D)))

    def backward(self, grad):
        """The [CLS] row and the position table are shared by every image: their gradients sum over B."""
        saved = autograd.saved(self)
        grad = saved.tap("output", grad)                                       # (B, 1 + N, D)
        d_x = self.dropout.backward(grad)                                      # (B, 1 + N, D)
        d_positions = d_x.sum(axis=0)                                          # (1 + N, D)
        if self.interpolate:
            P = self.patch_size
            H, W = saved.inputs["pixel_values"].shape[2:]
            d_positions = interpolate_positions_backward(saved.tap("positions", d_positions), self.positions,
                                                         H // P, W // P)      # (1 + n n, D)
        autograd.accumulate(self, "positions", d_positions)
        autograd.accumulate(self, "cls_token", d_x[:, :1].sum(axis=0))
        return self.patch.backward(d_x[:, 1:])                                 # (B, C, H, W)


class ViT(Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embeddings = ViTEmbeddings(cfg)
        self.layers = [EncoderLayer(cfg) for _ in range(cfg.num_layers)]
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
            out["pooled_output"] = tap("pooled", np.tanh(self.pooler(h[:, 0])))  # (B, D)
        if self.classifier is not None:
            out["logits"] = tap("logits", self.classifier(h[:, 0]))           # (B, num_labels)
        return out

    def flops(self, pixel_values, **_):
        B, _, H, W = pixel_values
        T, D = 1 + (H // self.cfg.patch_size) * (W // self.cfg.patch_size), self.cfg.d_model
        yield from scoped("embeddings", self.embeddings.flops(pixel_values))
        for i, layer in enumerate(self.layers):
            yield from scoped(f"layers.{i}", layer.flops((B, T, D)))
        yield from scoped("final_norm", self.final_norm.flops((B, T, D)))
        if self.pooler is not None:
            yield from scoped("pooler", self.pooler.flops((B, D)))               # the [CLS] row only
            yield Op("pooler.tanh", "elementwise", B * D * PER_ELEMENT["tanh"])
        if self.classifier is not None:
            yield from scoped("classifier", self.classifier.flops((B, D)))

    def saved(self, f, pixel_values, **_):
        B, _, H, W = pixel_values
        T, D = 1 + (H // self.cfg.patch_size) * (W // self.cfg.patch_size), self.cfg.d_model
        yield from scoped("embeddings", self.embeddings.saved(f, pixel_values))
        for i, layer in enumerate(self.layers):
            yield from scoped(f"layers.{i}", layer.saved(f, (B, T, D), masked=False))  # no padding in an image
        yield from scoped("final_norm", self.final_norm.saved(f, (B, T, D)))
        yield Saved("", "final norm output (the heads' [CLS] row is a view of it)", B * T * D * f)
        if self.pooler is not None:
            yield Saved("pooler", "tanh output", B * D * f)

    def peak(self, f, live, pixel_values, **_):
        B, _, H, W = pixel_values
        T, D = 1 + (H // self.cfg.patch_size) * (W // self.cfg.patch_size), self.cfg.d_model
        return max(layer.peak(f, live, (B, T, D)) for layer in self.layers)

    def backward(self, grad):
        """grad: {output key: dL/d output} -> dL/d pixel_values. Both heads read the [CLS] row only."""
        saved = autograd.saved(self)
        tap = saved.tap
        d_h = grad["last_hidden_state"].copy()                                 # (B, 1 + N, D)
        if self.pooler is not None:
            d_pooled = tanh_backward(tap("pooled", grad["pooled_output"]), saved.taps["pooled"])
            d_h[:, 0] += self.pooler.backward(d_pooled)                        # (B, D)
        if self.classifier is not None:
            d_h[:, 0] += self.classifier.backward(tap("logits", grad["logits"]))  # (B, D)
        d_h = self.final_norm.backward(d_h)                                    # (B, 1 + N, D)
        for layer in reversed(self.layers):
            d_h = layer.backward(d_h)                                          # (B, 1 + N, D)
        return self.embeddings.backward(d_h)                                   # (B, C, H, W)
