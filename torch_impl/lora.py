"""Mirrors `numpy_ref.lora`.

Differs: `LoraLinear` subclasses `torch_impl.linear.Linear` (an `nn.Linear`), so its base weight
keeps torch's leaf name and `[out, in]` layout, and `apply` hands it the base's own Parameters (the
frozen weights are not copied); A and B are Linears too, whose torch weights are peft's
`lora_A.weight` (r, in) and `lora_B.weight` (out, r). The update is `F.linear` on the dropped input.
"""
import torch.nn.functional as F

from conformance.core import checks, lora as lora_settings, trace
from conformance.core.config import Config
from torch_impl.activations import Dropout
from torch_impl.linear import Linear


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
        base = F.linear(x, self.weight, self.bias)                                 # (..., d_out)
        update = self.lora_b(self.lora_a(self.dropout(x)))                         # (..., d_out)
        return tap("output", base + self.scaling * update)                         # (..., d_out)


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
        new = LoraLinear(base.d_in, base.d_out, base.bias is not None, lcfg).to(base.weight)
        new.weight, new.bias = base.weight, base.bias
        new.train(base.training)
        _replace(model, path, new)
    return paths
