"""Linear: y = x @ kernel + bias.

Shapes: (..., d_in) -> (..., d_out). The kernel is stored `[in, out]` ("math layout"),
so the product reads left to right as it does on paper. PyTorch's `nn.Linear` stores
`[out, in]` and computes `x @ W.T`; the transpose lives in `conformance.backends.torch_backend`,
never in model code.

Costs: 2 N d_in d_out FLOPs for N positions (one multiply-add per kernel entry per position),
N d_out for the bias; backward keeps x, which dK = x^T dy needs.
"""
from conformance.core import checks, trace
from conformance.core.costs import PER_ELEMENT, Op, Saved, rows
from numpy_ref import autograd
from numpy_ref._module import Module


def linear(x, kernel, bias=None):
    # One (B*T, d_in) @ (d_in, d_out) product: NumPy runs a 3-D `x @ kernel` as B separate
    # matrix products, 4x slower at batch 8; the reshape changes nothing else.
    y = (x.reshape(-1, x.shape[-1]) @ kernel).reshape(*x.shape[:-1], kernel.shape[1])  # (..., d_out)
    return y if bias is None else y + bias                                               # (..., d_out)


def linear_backward(grad, x, kernel, bias=None):
    """y = x K + b, with the N positions of x (..., d_in) as the rows of an (N, d_in) matrix:

        dx = dy K^T            each input feeds every output through K[i, :]
        dK = x^T dy            (d_in, d_out): a sum over the N positions, as K is shared by all
        db = sum_N dy          the bias is added at every position

    Returns (dx, dK, db); db is None without a bias.
    """
    g = grad.reshape(-1, grad.shape[-1])                          # (N, d_out)
    d_x = (g @ kernel.T).reshape(x.shape)                         # (..., d_in)
    d_kernel = x.reshape(-1, x.shape[-1]).T @ g                   # (d_in, d_out)
    return d_x, d_kernel, None if bias is None else g.sum(axis=0)  # (d_out,)


class Linear(Module):
    def __init__(self, d_in: int, d_out: int, use_bias: bool = True):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.kernel = self.param("kernel", d_in, d_out)
        self.bias = self.param("bias", d_out) if use_bias else None

    def forward(self, x):
        checks.floating("x", checks.dtype_name(x))
        checks.last_axis("x", checks.shape_of(x), self.d_in, "d_in")
        tap = trace.tap_for(self)
        return tap("output", linear(x, self.kernel, self.bias))  # (..., d_out)

    def flops(self, x, **_):
        yield Op("", "projection", 2 * rows(x) * self.d_in * self.d_out)
        if self.bias is not None:
            yield Op("bias", "elementwise", rows(x) * self.d_out * PER_ELEMENT["bias"])

    def saved(self, f, x, **_):
        yield Saved("", "input", rows(x) * self.d_in * f)

    def backward(self, grad):
        saved = autograd.saved(self)
        grad = saved.tap("output", grad)                                           # (..., d_out)
        d_x, d_kernel, d_bias = linear_backward(grad, saved.inputs["x"], self.kernel, self.bias)
        autograd.accumulate(self, "kernel", d_kernel)
        if d_bias is not None:
            autograd.accumulate(self, "bias", d_bias)
        return d_x                                                                 # (..., d_in)
