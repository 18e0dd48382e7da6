"""Mirrors `numpy_ref.lora`.

Differs: `apply` hands each `LoraLinear` the base Linear's own Keras variables (the frozen weights
are not copied) and its name and dtype policy; the adapter's Dropout reads `training` from Keras's
call context, as every Dropout here does.
"""
from conformance.core import checks, lora as lora_settings, trace
from conformance.core.config import Config
from tf_impl import _layer
from tf_impl.activations import Dropout
from tf_impl.linear import Linear, linear


class LoraLinear(Linear):
    def __init__(self, d_in: int, d_out: int, use_bias: bool, lcfg: lora_settings.LoraConfig, **kwargs):
        super().__init__(d_in, d_out, use_bias, **kwargs)
        self.scaling = lcfg.scaling
        policy = self.dtype_policy
        self.dropout = Dropout(Config(kind="linear", dropout=lcfg.dropout), name="dropout", dtype=policy)
        self.lora_a = Linear(d_in, lcfg.rank, use_bias=False, name="lora_a", dtype=policy)
        self.lora_b = Linear(lcfg.rank, d_out, use_bias=False, name="lora_b", dtype=policy)

    def call(self, x):
        checks.floating("x", checks.dtype_name(x))
        checks.last_axis("x", checks.shape_of(x), self.d_in, "d_in")
        tap = trace.tap_for(self)
        base = linear(x, self.kernel, self.bias)                                   # (..., d_out)
        update = self.lora_b(self.lora_a(self.dropout(x)))                         # (..., d_out)
        return tap("output", base + self.scaling * update)                         # (..., d_out)


def _replace(model, path: str, new) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(dict(_layer.named_layers(model))[parent_path], name, new)


def apply(model, lcfg: lora_settings.LoraConfig) -> list[str]:
    """Swap each Linear of `model` selected by `lcfg.targets` for a LoraLinear with its kernel and bias."""
    linears = {p: m for p, m in _layer.named_layers(model) if isinstance(m, Linear) and not isinstance(m, LoraLinear)
               and p and not p.endswith((".lora_a", ".lora_b"))}
    paths = lora_settings.targets(linears, lcfg)
    for path in paths:
        base = linears[path]
        new = LoraLinear(base.d_in, base.d_out, base.bias is not None, lcfg, name=base.name, dtype=base.dtype_policy)
        new.kernel, new.bias = base.kernel, base.bias
        _replace(model, path, new)
    return paths
