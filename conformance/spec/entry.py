"""A registry entry: one component or model, declared once, with the class all three mirrors share.

An `Entry` names the class (the same name in `numpy_ref`, `torch_impl` and `tf_impl`), how
to construct it from a `Config`, a tiny config for tests, the variants worth testing (config
overrides plus input options) and an input maker. The conformance suite is generated from
the registry's entries: adding one tests it in every framework and dtype with no new test code.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from conformance.core.config import Config

PACKAGES = {"numpy": "numpy_ref", "torch": "torch_impl", "tf": "tf_impl"}  # a mirror's package


@dataclass(frozen=True)
class Variant:
    overrides: dict = field(default_factory=dict)  # Config fields
    options: dict = field(default_factory=dict)    # passed to the input maker
    frameworks: tuple | None = None  # the frameworks this variant is about; None: every one


@dataclass(frozen=True)
class Entry:
    name: str
    cls: str
    tiny: Config
    make_inputs: Callable  # (cfg, rng, batch, length, **options) -> dict[str, np.ndarray]
    variants: dict[str, Variant]
    args: Callable[[Config], tuple] = lambda cfg: (cfg,)
    is_model: bool = False
    training: bool = False  # run in training mode (dropout driven by a supplied mask)
    float64_output: bool = False  # a constant computed in float64 whatever the dtype; callers cast
    differentiable: bool = True  # False: the output depends on no float input or weight (nothing has a gradient)
    dtypes: tuple | None = None  # the dtypes it runs in; None: every dtype its backend runs

    def config(self, variant: str = "default") -> Config:
        return self.tiny.replace(**self.variants[variant].overrides)

    def inputs(self, cfg: Config, variant: str = "default", seed: int = 0, batch: int = 2,
               length: int = 7) -> dict:
        rng = np.random.default_rng(seed)
        return self.make_inputs(cfg, rng, batch, length, **self.variants[variant].options)

    def implementation(self, package: str):
        """The class in a mirror's package (`numpy_ref`, `torch_impl`, `tf_impl`)."""
        return getattr(importlib.import_module(package), self.cls)

    def signature(self) -> dict[str, bool]:
        """{input name: required} of the class's forward (the twins' are the same; `test_mirror` checks):
        the inputs a built model takes. `cache`, the decoding state, is `Built.step`'s own argument."""
        forward = self.implementation(PACKAGES["numpy"]).forward
        params = list(inspect.signature(forward).parameters.values())[1:]  # after self
        return {p.name: p.default is inspect.Parameter.empty for p in params if p.name != "cache"}

    def reference(self, cfg: Config):
        """The NumPy reference module for `cfg`: its tree declares every canonical name and shape."""
        return self.construct(PACKAGES["numpy"], cfg)

    def construct(self, package: str, cfg: Config, **kwargs):
        """`cfg`'s module in a mirror's package (keyword arguments to its constructor); with
        `weight_quantization="int8"` every Linear of it holds int8 weights (`<package>.linear.quantize_linears`)."""
        module = self.implementation(package)(*self.args(cfg), **kwargs)
        if cfg.weight_quantization == "int8":
            importlib.import_module(f"{package}.linear").quantize_linears(module)
        return module
