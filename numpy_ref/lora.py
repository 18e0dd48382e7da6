"""LoRA: a frozen projection plus a trained low-rank update (`conformance.core.lora` has the settings).

Shapes: x (..., in), A (in, r), B (r, out), y (..., out); s = alpha / r.

    y = x W + b + s * dropout(x) A B

The base path is `linear` unchanged; the adapter path is two bias-free Linears (`lora_a`, `lora_b`)
after a Dropout of its own (`dropout`, peft's lora_dropout), so the adapter has canonical names
under the target's path and the same dropout masks in all three frameworks. With B = 0 (its
initial value) the output is the base model's exactly. Merged, W' = W + s A B gives the same y
(without dropout): `conformance.core.lora.merge`.

Backward, from dy:
    dx = dy W^T + dropout'(s dy B^T A^T)     the base path and the adapter path both read x
    dW = x^T dy, db = sum dy                 (frozen in LoRA training: computed, not applied)
    dA, dB                                   the two Linears' own backwards, on s dy

Costs: the base projection's 2 N in out, plus 2 N r (in + out) for the adapter and N out for the
scaled sum; backward keeps x (base), dropout(x) (A's input) and x A (B's input).

`apply(model, lcfg)` swaps every targeted `Linear` of a model for a `LoraLinear` holding the same
kernel and bias, in place, and returns the target paths.
"""
from conformance.core import checks, lora as lora_settings, trace
from conformance.core.config import Config
from conformance.core.costs import PER_ELEMENT, Op, rows, scoped
from numpy_ref import autograd
from numpy_ref.activations import Dropout
from numpy_ref.linear import Linear, linear, linear_backward


class LoraLinear(Linear):
    def __init__(self, d_in: int, d_out: int, use_bias: bool, lcfg: lora_settings.LoraConfig):
        super().__init__(d_in, d_out, use_bias)
        self.scaling = lcfg.scaling
        self.dropout = Dropout(Config(kind="linear", dropout=lcfg.dropout))
        self.lora_a = Linear(d_in, lcfg.rank, use_bias=False)
        self.lora_b = Linear(lcfg.rank, d_out, use_bias=False)

    def forward(self, x):
        checks.floating("x", checks.dtype_name(x))
        checks.last_axis("x", checks.shape_of(x), self.d_in, "d_in")
        tap = trace.tap_for(self)
        base = linear(x, self.kernel, self.bias)                                   # (..., d_out)
        update = self.lora_b(self.lora_a(self.dropout(x)))                         # (..., d_out)
        return tap("output", base + self.scaling * update)                         # (..., d_out)

    def flops(self, x, **_):
        yield from super().flops(x)
        yield Op("lora", "projection", 2 * rows(x) * self.lora_a.d_out * (self.d_in + self.d_out))
        yield Op("lora.sum", "elementwise", rows(x) * self.d_out * PER_ELEMENT["bias"])

    def saved(self, f, x, **_):
        """The base projection's input, then the adapter's: dropout(x) (and its keep mask) and x A."""
        yield from super().saved(f, x)
        yield from scoped("dropout", self.dropout.saved(f, x))
        yield from scoped("lora_a", self.lora_a.saved(f, x))
        yield from scoped("lora_b", self.lora_b.saved(f, (*x[:-1], self.lora_a.d_out)))

    def backward(self, grad):
        saved = autograd.saved(self)
        grad = saved.tap("output", grad)                                           # (..., d_out)
        d_x, d_kernel, d_bias = linear_backward(grad, saved.inputs["x"], self.kernel, self.bias)
        autograd.accumulate(self, "kernel", d_kernel)
        if d_bias is not None:
            autograd.accumulate(self, "bias", d_bias)
        d_update = self.lora_a.backward(self.lora_b.backward(self.scaling * grad))  # (..., d_in)
        return d_x + self.dropout.backward(d_update)                               # (..., d_in)


def _replace(model, path: str, new) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(dict(model.named_modules())[parent_path], name, new)


def apply(model, lcfg: lora_settings.LoraConfig) -> list[str]:
    """Swap each Linear of `model` selected by `lcfg.targets` for a LoraLinear with its kernel and bias."""
    linears = {p: m for p, m in model.named_modules() if isinstance(m, Linear) and not isinstance(m, LoraLinear)
               and p and not p.endswith((".lora_a", ".lora_b"))}
    paths = lora_settings.targets(linears, lcfg)
    for path in paths:
        base = linears[path]
        new = LoraLinear(base.d_in, base.d_out, base.bias is not None, lcfg)
        new.kernel, new.bias, new.training = base.kernel, base.bias, base.training
        _replace(model, path, new)
    return paths
