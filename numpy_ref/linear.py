"""Linear: y = x @ kernel + bias.

Shapes: (..., d_in) -> (..., d_out). The kernel is stored `[in, out]` ("math layout"),
so the product reads left to right as it does on paper. PyTorch's `nn.Linear` stores
`[out, in]` and computes `x @ W.T`; the transpose lives in `conformance.backends.torch_backend`,
never in model code.

int8 weights (`Config.weight_quantization="int8"`, `quantize_linears`): the kernel is held as int8
q (d_in, d_out) with one scale per output channel, `kernel_scale` (d_out,), and the product uses the
dequantized kernel q * s (`conformance.weights.quantize` makes q and s; |kernel - q s| <= s / 2 per entry).

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


def dequantize(q, scale):
    """The kernel an int8 Linear computes with: q (d_in, d_out) int8 times its column's scale (d_out,)."""
    return q.astype(scale.dtype) * scale  # (d_in, d_out)


class Linear(Module):
    def __init__(self, d_in: int, d_out: int, use_bias: bool = True):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.kernel = self.param("kernel", d_in, d_out)
        self.bias = self.param("bias", d_out) if use_bias else None
        self.kernel_scale = None  # int8 weights: (d_out,), one scale per output channel (`quantize_int8`)

    def quantize_int8(self):
        """Hold the kernel as int8 q (d_in, d_out) and `kernel_scale` (d_out,): both loaded with the weights."""
        self.kernel_scale = self.param("kernel_scale", self.d_out)

    def used_kernel(self):
        """The kernel the product uses: the float kernel, or s q for int8 weights."""
        return self.kernel if self.kernel_scale is None else dequantize(self.kernel, self.kernel_scale)

    def forward(self, x):
        checks.floating("x", checks.dtype_name(x))
        checks.last_axis("x", checks.shape_of(x), self.d_in, "d_in")
        tap = trace.tap_for(self)
        return tap("output", linear(x, self.used_kernel(), self.bias))  # (..., d_out)

    def flops(self, x, **_):
        yield Op("", "projection", 2 * rows(x) * self.d_in * self.d_out)
        if self.bias is not None:
            yield Op("bias", "elementwise", rows(x) * self.d_out * PER_ELEMENT["bias"])

    def saved(self, f, x, **_):
        yield Saved("", "input", rows(x) * self.d_in * f)

    def backward(self, grad):
        saved = autograd.saved(self)
        grad = saved.tap("output", grad)                                           # (..., d_out)
        d_x, d_kernel, d_bias = linear_backward(grad, saved.inputs["x"], self.used_kernel(), self.bias)
        autograd.accumulate(self, "kernel", d_kernel)
        if d_bias is not None:
            autograd.accumulate(self, "bias", d_bias)
        return d_x                                                                 # (..., d_in)


def quantize_linears(module: Module) -> Module:
    """Every Linear in `module`'s tree holds int8 weights (`Linear.quantize_int8`), in place: what
    `Config.weight_quantization="int8"` builds. A module with no Linear is refused (`checks.linear_layers`)."""
    linears = list({id(m): m for _, m in module.named_modules() if isinstance(m, Linear)}.values())  # a shared layer once
    checks.linear_layers(type(module).__name__, len(linears))
    for m in linears:
        m.quantize_int8()
    return module
