"""Mirrors `numpy_ref.linear`.

Differs: the kernel (RandomNormal(stddev=0.02)) and bias (zeros) are Keras weights made in
`__init__`; its config is the constructor's `d_in`, `d_out`, `use_bias` (no Config), as for
every layer (`tf_impl._layer`).
"""
from keras import ops
from keras.initializers import RandomNormal

from conformance.core import checks, trace
from tf_impl._layer import Layer


def linear(x, kernel, bias=None):
    y = ops.matmul(x, kernel)               # (..., d_out)
    return y if bias is None else y + bias  # (..., d_out)


class Linear(Layer):
    def __init__(self, d_in: int, d_out: int, use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.d_in, self.d_out = d_in, d_out
        self.kernel = self.add_weight(shape=(d_in, d_out), name="kernel",
                                      initializer=RandomNormal(stddev=0.02))
        self.bias = (self.add_weight(shape=(d_out,), name="bias", initializer="zeros")
                     if use_bias else None)

    def call(self, x):
        checks.floating("x", checks.dtype_name(x))
        checks.last_axis("x", checks.shape_of(x), self.d_in, "d_in")
        tap = trace.tap_for(self)
        return tap("output", linear(x, self.kernel, self.bias))  # (..., d_out)
