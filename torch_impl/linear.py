"""Mirrors `numpy_ref.linear`.

Differs: subclasses `nn.Linear`, whose `weight` is `[out, in]`, and computes with
`F.linear` (x @ weight.T + bias); `conformance.backends.torch_backend` transposes the canonical
kernel. int8 weights: `weight` becomes an int8 `nn.Parameter` (out, in) that takes no gradient, beside
`kernel_scale` (out,), and `F.linear` reads the dequantized weight (torch's int8 matmul, `torch._int_mm`,
needs int8 activations too: this is weight-only int8).
Not here: `linear` (`F.linear` is the function).
Own lines: `dequantize` (the scale broadcasts along torch's [out, in] rows).
"""
import torch
import torch.nn.functional as F
from torch import nn

from conformance.core import checks, trace


def dequantize(q, scale):
    return q.to(scale.dtype) * scale[:, None]  # (d_out, d_in)


class Linear(nn.Linear):
    def __init__(self, d_in: int, d_out: int, use_bias: bool = True):
        super().__init__(d_in, d_out, bias=use_bias)
        self.d_in, self.d_out = d_in, d_out
        self.register_parameter("kernel_scale", None)

    def quantize_int8(self):
        self.weight = nn.Parameter(torch.zeros(self.d_out, self.d_in, dtype=torch.int8), requires_grad=False)
        self.kernel_scale = nn.Parameter(torch.zeros(self.d_out), requires_grad=False)

    def used_kernel(self):
        return self.weight if self.kernel_scale is None else dequantize(self.weight, self.kernel_scale)

    def forward(self, x):
        checks.floating("x", checks.dtype_name(x))
        checks.last_axis("x", checks.shape_of(x), self.d_in, "d_in")
        tap = trace.tap_for(self)
        return tap("output", F.linear(x, self.used_kernel(), self.bias))  # (..., d_out)


def quantize_linears(module: nn.Module) -> nn.Module:
    linears = list({id(m): m for m in module.modules() if isinstance(m, Linear)}.values())  # a shared layer once
    checks.linear_layers(type(module).__name__, len(linears))
    for m in linears:
        m.quantize_int8()
    return module
