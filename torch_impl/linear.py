"""Mirrors `numpy_ref.linear`.

Differs: subclasses `nn.Linear`, whose `weight` is `[out, in]`, and computes with
`F.linear` (x @ weight.T + bias); `conformance.backends.torch_backend` transposes the canonical
kernel.
Not here: `linear` (`F.linear` is the function).
"""
import torch.nn.functional as F
from torch import nn

from conformance.core import checks, trace


class Linear(nn.Linear):
    def __init__(self, d_in: int, d_out: int, use_bias: bool = True):
        super().__init__(d_in, d_out, bias=use_bias)
        self.d_in, self.d_out = d_in, d_out

    def forward(self, x):
        checks.floating("x", checks.dtype_name(x))
        checks.last_axis("x", checks.shape_of(x), self.d_in, "d_in")
        tap = trace.tap_for(self)
        return tap("output", F.linear(x, self.weight, self.bias))  # (..., d_out)
