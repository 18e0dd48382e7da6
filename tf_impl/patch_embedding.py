"""Mirrors `numpy_ref.patch_embedding`.

Differs: the kernel (P, P, C, D), keras.layers.Conv2D's own layout, and the bias are Keras weights
made in `__init__` (`keras.ops.conv(images, kernel, strides=P)` computes the same numbers:
`conformance/suites/test_vit.py` holds the two equal). The batch axis of the reshapes is -1, so a
traced image with no batch size yet is cut the same way.
"""
from keras import ops
from keras.initializers import RandomNormal

from conformance.core import checks, trace
from tf_impl._layer import Layer


def patchify(images, P):
    """(B, H, W, C) channels last -> (B, N, P P C): the non-overlapping P x P patches, row-major."""
    _, H, W, C = images.shape
    h, w = H // P, W // P
    x = images[:, :h * P, :w * P]                                              # (B, h P, w P, C)
    x = ops.reshape(x, (-1, h, P, w, P, C))                                    # (B, h, P, w, P, C)
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))                                   # (B, h, w, P, P, C)
    return ops.reshape(x, (-1, h * w, P * P * C))                              # (B, N, P P C)


class PatchEmbedding(Layer):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.patch_size, self.num_channels, self.d_model = cfg.patch_size, cfg.num_channels, cfg.d_model
        self.interpolate = cfg.interpolate_pos_encoding
        self.kernel = self.add_weight(shape=(cfg.patch_size, cfg.patch_size, cfg.num_channels, cfg.d_model),
                                      name="kernel", initializer=RandomNormal(stddev=0.02))
        self.bias = self.add_weight(shape=(cfg.d_model,), name="bias", initializer="zeros")

    def call(self, pixel_values):
        """pixel_values: (B, C, H, W), channels first."""
        checks.pixel_values(checks.spec(pixel_values), self.num_channels, self.patch_size, self.interpolate)
        tap = trace.tap_for(self)
        images = ops.transpose(pixel_values, (0, 2, 3, 1))                     # (B, H, W, C)
        patches = tap("patches", patchify(images, self.patch_size))           # (B, N, P P C)
        kernel = ops.reshape(self.kernel, (-1, self.d_model))                  # (P P C, D)
        return tap("output", ops.matmul(patches, kernel) + self.bias)          # (B, N, D)
