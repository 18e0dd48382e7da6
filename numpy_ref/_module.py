"""A minimal Module for the NumPy reference: named children and named parameters.

Just enough of `torch.nn.Module` to give the reference the same tree, the same
dotted names and the same `named_parameters()` as its twins. A parameter is declared
by shape (`Param`) and holds no data until weights are loaded, so the reference also
serves as the declaration of every model's canonical names and shapes: describing
gpt2-xl allocates nothing.

`backward` is the forward's reverse: each module undoes its most recent recorded call,
see `numpy_ref.autograd`.
"""
from __future__ import annotations

import numpy as np

from conformance.core import trace
from numpy_ref import autograd


# What the reference alone has, by rule (the mirror check, conformance/suites/test_mirror.py): its
# hand-written backward and its cost formulas, and the module that exists for them. Anything else
# the reference has and a twin lacks is declared in the twin's docstring.
REFERENCE_ONLY = {"modules": ("autograd.py",), "methods": ("backward", "flops", "saved", "peak", "cache_bytes"),
                  "suffixes": ("_backward", "_flops", "_saved")}


class Param:
    """A declared, not yet loaded, parameter."""

    def __init__(self, *shape: int):
        self.shape = tuple(shape)

    def __repr__(self):
        return f"Param{self.shape}"


class Module:
    # Taps whose tensors depend on no float input or weight (the sinusoidal table, rotary's cos and
    # sin): no framework has a gradient for them, and the suites leave them out (`autograd.constant_keys`).
    constant_taps: tuple = ()

    def __init__(self):
        self._param_names: list[str] = []
        self.training = False

    def param(self, name: str, *shape: int) -> Param:
        self._param_names.append(name)
        return Param(*shape)

    def __call__(self, *args, **kwargs):
        leave = trace.entering(self, args, kwargs)  # None unless a trace captures this module
        saved = autograd.entering(self, args, kwargs)  # None unless a tape records for backward
        out = self.forward(*args, **kwargs)
        if leave:
            leave(out)
        if saved:
            saved.output = out
        return out

    def backward(self, grad):
        """dL/d(output) -> dL/d(floating inputs), adding dL/d(weights) to the tape (`numpy_ref.autograd`)."""
        raise NotImplementedError(f"{type(self).__name__} has no backward")

    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, list) and value and isinstance(value[0], Module):
                for i, child in enumerate(value):
                    yield f"{name}.{i}", child

    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self):
        """(canonical name, ndarray or Param) for every parameter, in declaration order."""
        for path, module in self.named_modules():
            for name in module._param_names:
                yield (f"{path}.{name}" if path else name), getattr(module, name)

    def param_shapes(self) -> dict[str, tuple]:
        return {name: tuple(p.shape) for name, p in self.named_parameters()}

    def load_weights(self, weights: dict[str, np.ndarray], dtype="float64", partial: bool = False) -> "Module":
        """Set every parameter from `weights` (already checked by `conformance.weights`), one at a time;
        `partial`: only those `weights` names, the others stay declared `Param`s (using one is an error)."""
        for path, module in self.named_modules():
            for name in module._param_names:
                key = f"{path}.{name}" if path else name
                if partial and key not in weights:
                    continue
                w = weights[key]  # an integer tensor (int8 weights) keeps its dtype
                setattr(module, name, Param(*np.shape(w)))  # the old array let go before the new one is made
                setattr(module, name, w if np.asarray(w).dtype.kind == "i" else np.asarray(w, dtype=dtype))
        return self

    def train(self, mode: bool = True) -> "Module":
        for _, module in self.named_modules():
            module.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)
