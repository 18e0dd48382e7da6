"""Mirrors `numpy_ref.patch_embedding`.

Differs: the kernel (P, P, C, D) and the bias are parameters of this module under their canonical
names (a strided `nn.Conv2d` would store the kernel (D, C, P, P) and compute the same numbers with
`F.conv2d`: `conformance/suites/test_vit.py` holds the two equal); the product is `patches @ kernel`,
one matmul over every token.
"""
import torch
from torch import nn

from conformance.core import checks, trace


def patchify(images, P):
    """(B, H, W, C) channels last -> (B, N, P P C): the non-overlapping P x P patches, row-major."""
    B, H, W, C = images.shape
    h, w = H // P, W // P
    x = images[:, :h * P, :w * P]                                              # (B, h P, w P, C)
    x = x.reshape(B, h, P, w, P, C)                                            # (B, h, P, w, P, C)
    x = x.permute(0, 1, 3, 2, 4, 5)                                            # (B, h, w, P, P, C)
    return x.reshape(B, h * w, P * P * C)                                      # (B, N, P P C)


class PatchEmbedding(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.patch_size, self.num_channels, self.d_model = cfg.patch_size, cfg.num_channels, cfg.d_model
        self.interpolate = cfg.interpolate_pos_encoding
        self.kernel = nn.Parameter(torch.zeros(cfg.patch_size, cfg.patch_size, cfg.num_channels, cfg.d_model))
        self.bias = nn.Parameter(torch.zeros(cfg.d_model))

    def forward(self, pixel_values):
        """pixel_values: (B, C, H, W), channels first."""
        checks.pixel_values(checks.spec(pixel_values), self.num_channels, self.patch_size, self.interpolate)
        tap = trace.tap_for(self)
        images = pixel_values.permute(0, 2, 3, 1)                              # (B, H, W, C)
        patches = tap("patches", patchify(images, self.patch_size))           # (B, N, P P C)
        kernel = self.kernel.reshape(-1, self.d_model)                         # (P P C, D)
        return tap("output", patches @ kernel + self.bias)                     # (B, N, D)
