"""Named taps at op boundaries, shared by all three frameworks.

Model code calls `tap = trace.tap_for(self)` once per forward and then
`x = tap("probs", x)`: the tap returns its argument unchanged. With no trace being
recorded `tap_for` returns `untraced`, a function that does nothing, so tracing off
costs one global lookup per module call. While a `Tracer` is active each tap records
`(path.name, tensor)` where `path` is the module's dotted weight path, so a NumPy
trace and a Keras trace line up by name with no mapping table. A module called more
than once in one forward (the 2017 Transformer's shared embedding) records its later
calls as `path.name#1`, `#2`, ...: the order of calls is the same in every framework.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable

import numpy as np

_active: "Tracer | None" = None


def untraced(name, x):
    return x


def tap_for(module) -> Callable:
    if _active is None:
        return untraced
    return _active.scope(module)


class Tracer:
    """Records the tapped tensors of one forward, in execution order.

    `named_modules` yields (dotted path, module) for the traced root; `to_numpy`
    turns a framework tensor into a NumPy array.
    """

    def __init__(self, named_modules: Iterable, to_numpy: Callable):
        self.paths = {id(module): path for path, module in named_modules}
        self.to_numpy = to_numpy
        self.records: dict[str, np.ndarray] = {}

    def scope(self, module) -> Callable:
        path = self.paths.get(id(module), "")

        def tap(name, x):
            key = base = f"{path}.{name}" if path else name
            calls = 0
            while key in self.records:
                calls += 1
                key = f"{base}#{calls}"
            self.records[key] = np.asarray(self.to_numpy(x))
            return x

        return tap


@contextmanager
def recording(named_modules: Iterable, to_numpy: Callable):
    global _active
    if _active is not None:
        raise RuntimeError("a trace is already being recorded")
    _active = Tracer(named_modules, to_numpy)
    try:
        yield _active
    finally:
        _active = None
