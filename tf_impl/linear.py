"""Mirrors `numpy_ref.linear`.

Differs: the kernel (RandomNormal(stddev=0.02)) and bias (zeros) are Keras weights made in
`__init__`; its config is the constructor's `d_in`, `d_out`, `use_bias` (no Config), as for
every layer (`tf_impl._layer`). int8 weights: the float kernel variable is replaced by an int8 one
(not trainable) beside `kernel_scale`, and `ops.matmul` reads the dequantized kernel (weight-only int8:
Keras's own `Dense.quantize("int8")` quantizes the activations too, for an int8 x int8 matmul).
"""
from keras import ops
from keras.initializers import RandomNormal

from conformance.core import checks, trace
from tf_impl._layer import Layer, named_layers


def linear(x, kernel, bias=None):
    y = ops.matmul(x, kernel)               # (..., d_out)
    return y if bias is None else y + bias  # (..., d_out)


def dequantize(q, scale):
    return ops.cast(q, scale.dtype) * scale  # (d_in, d_out)


class Linear(Layer):
    def __init__(self, d_in: int, d_out: int, use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.d_in, self.d_out = d_in, d_out
        self.kernel = self.add_weight(shape=(d_in, d_out), name="kernel",
                                      initializer=RandomNormal(stddev=0.02))
        self.bias = (self.add_weight(shape=(d_out,), name="bias", initializer="zeros")
                     if use_bias else None)
        self.kernel_scale = None

    def quantize_int8(self):
        self._untrack_variable(self.kernel)  # what Keras's own `del layer.kernel` does, less its gc.collect()
        object.__delattr__(self, "kernel")
        self.kernel = self.add_weight(shape=(self.d_in, self.d_out), name="kernel", dtype="int8",
                                      initializer="zeros", trainable=False)
        self.kernel_scale = self.add_weight(shape=(self.d_out,), name="kernel_scale", initializer="ones",
                                            trainable=False)

    def used_kernel(self):
        return self.kernel if self.kernel_scale is None else dequantize(self.kernel, self.kernel_scale)

    def call(self, x):
        checks.floating("x", checks.dtype_name(x))
        checks.last_axis("x", checks.shape_of(x), self.d_in, "d_in")
        tap = trace.tap_for(self)
        return tap("output", linear(x, self.used_kernel(), self.bias))  # (..., d_out)


def quantize_linears(module):
    linears = list({id(m): m for _, m in named_layers(module) if isinstance(m, Linear)}.values())  # a shared layer once
    checks.linear_layers(type(module).__name__, len(linears))
    for m in linears:
        m.quantize_int8()
    return module
