"""Patch embedding: an image cut into P x P patches, each flattened and projected to width D,
the tokens of a Vision Transformer (Dosovitskiy et al. 2020, "An Image is Worth 16x16
Words").

    images (B, H, W, C) -> patches (B, N, P P C) -> patches @ kernel + bias (B, N, D)
    N = (H / P) (W / P), the patches in row-major order over the grid: the top row left to right first

A convolution whose stride equals its kernel size visits every pixel exactly once, one patch
at a time: it is one matmul, each token the dot products of one flattened patch with the D
filters. The kernel is (P, P, C, D), Keras's Conv2D layout: read as a (P P C, D) matrix it
is the [in, out] kernel of a patch flattened in (i, j, c) order (rows of the patch, then
columns, then channels). torch's Conv2d stores the same numbers as (D, C, P, P); the leaf
layout `conv_out_in` (`conformance.spec.leaves`) converts between them, never this code.

Images enter channels first, (B, C, H, W), as transformers and torch's Conv2d take them; the
first line turns them channels last, (B, H, W, C), so that a pixel's C values sit next to
each other as the kernel's rows expect. With `interpolate_pos_encoding` an image may be any
size of at least one patch: the last H mod P rows and W mod P columns are dropped, as a
stride-P convolution drops them.

Costs: 2 B N (P P C) D FLOPs for the product and B N D for the bias; cutting the patches
only moves data. Backward keeps the patches: dkernel = patches^T dy over every token,
dpatches = dy kernel^T, put back where each pixel came from (a dropped remainder pixel gets
0).
"""
import numpy as np

from conformance.core import checks, trace
from conformance.core.costs import PER_ELEMENT, Op, Saved
from numpy_ref import autograd
from numpy_ref._module import Module
from numpy_ref.linear import linear, linear_backward


def patchify(images, P):
    """(B, H, W, C) channels last -> (B, N, P P C): the non-overlapping P x P patches, row-major."""
    B, H, W, C = images.shape
    h, w = H // P, W // P
    x = images[:, :h * P, :w * P]                                              # (B, h P, w P, C)
    x = x.reshape(B, h, P, w, P, C)                                            # (B, h, P, w, P, C)
    x = x.transpose(0, 1, 3, 2, 4, 5)                                          # (B, h, w, P, P, C)
    return x.reshape(B, h * w, P * P * C)                                      # (B, N, P P C)


def patchify_backward(grad, shape, P):
    """`patchify` in reverse: each pixel's gradient back in its place, (B, N, P P C) -> (B, H, W, C)."""
    B, H, W, C = shape
    h, w = H // P, W // P
    d = grad.reshape(B, h, w, P, P, C).transpose(0, 1, 3, 2, 4, 5)            # (B, h, P, w, P, C)
    d_images = np.zeros(shape, grad.dtype)                                     # (B, H, W, C)
    d_images[:, :h * P, :w * P] = d.reshape(B, h * P, w * P, C)
    return d_images


class PatchEmbedding(Module):
    def __init__(self, cfg):
        super().__init__()
        self.patch_size, self.num_channels, self.d_model = cfg.patch_size, cfg.num_channels, cfg.d_model
        self.interpolate = cfg.interpolate_pos_encoding
        self.kernel = self.param("kernel", cfg.patch_size, cfg.patch_size, cfg.num_channels, cfg.d_model)
        self.bias = self.param("bias", cfg.d_model)

    def forward(self, pixel_values):
        """pixel_values: (B, C, H, W), channels first."""
        checks.pixel_values(checks.spec(pixel_values), self.num_channels, self.patch_size, self.interpolate)
        tap = trace.tap_for(self)
        images = pixel_values.transpose(0, 2, 3, 1)                            # (B, H, W, C)
        patches = tap("patches", patchify(images, self.patch_size))           # (B, N, P P C)
        kernel = self.kernel.reshape(-1, self.d_model)                         # (P P C, D)
        return tap("output", linear(patches, kernel, self.bias))               # (B, N, D)

    def flops(self, pixel_values, **_):
        B, _, H, W = pixel_values
        P, C, D = self.patch_size, self.num_channels, self.d_model
        N = (H // P) * (W // P)
        yield Op("", "projection", 2 * B * N * P * P * C * D)
        yield Op("bias", "elementwise", B * N * D * PER_ELEMENT["bias"])

    def saved(self, f, pixel_values, **_):
        B, _, H, W = pixel_values
        P, C = self.patch_size, self.num_channels
        yield Saved("", "patches", B * (H // P) * (W // P) * P * P * C * f)

    def backward(self, grad):
        saved = autograd.saved(self)
        grad = saved.tap("output", grad)                                       # (B, N, D)
        kernel = self.kernel.reshape(-1, self.d_model)                         # (P P C, D)
        d_patches, d_kernel, d_bias = linear_backward(grad, saved.taps["patches"], kernel, self.bias)
        autograd.accumulate(self, "kernel", d_kernel.reshape(self.kernel.shape))
        autograd.accumulate(self, "bias", d_bias)
        d_patches = saved.tap("patches", d_patches)                            # (B, N, P P C)
        B, C, H, W = saved.inputs["pixel_values"].shape
        d_images = patchify_backward(d_patches, (B, H, W, C), self.patch_size)  # (B, H, W, C)
        return d_images.transpose(0, 3, 1, 2)                                  # (B, C, H, W)
