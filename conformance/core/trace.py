"""Named taps at op boundaries, shared by all three frameworks.

Model code calls `tap = trace.tap_for(self)` once per forward and then
`x = tap("probs", x)`: the tap returns its argument unchanged. With no trace being
recorded `tap_for` returns `untraced`, a function that does nothing, so tracing off
costs one global lookup per module call. While a `Tracer` is active each tap records
`(path.name, tensor)` where `path` is the module's dotted weight path, so a NumPy
trace and a Keras trace line up by name with no mapping table. A module called more
than once in one forward (the 2017 Transformer's shared embedding) records its later
calls as `path.name#1`, `#2`, ...: the order of calls is the same in every framework.

Memory is bounded on request: in summary mode a record is a `Summary` (shape, dtype,
statistics, a checksum) unless its name matches `keep` (a glob or several); full
tensors otherwise.
Modules whose path matches `capture` also record their call's inputs and output, which
is what `replay` needs to run one module of another framework on the reference's inputs.
`on_tap(key, tensor)`, if given, also sees each tapped tensor itself, as the framework holds it:
`conformance.compare.gradients` uses it to ask autograd for the gradient of every tapped tensor.
While `numpy_ref.autograd` records a forward for its hand-written backward, `tap_for` also
hands each tapped tensor to the tape (`_saving`), which keeps it for that module's backward.
"""
from __future__ import annotations

import fnmatch
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

_active: "Tracer | None" = None
_saving: "Callable | None" = None  # numpy_ref.autograd while it records: (module, tap) -> tap that also keeps


def untraced(name, x):
    return x


def tap_for(module) -> Callable:
    if _active is None and _saving is None:
        return untraced
    tap = untraced if _active is None else _active.scope(module)
    return tap if _saving is None else _saving(module, tap)


def entering(module, args, kwargs):
    """Called by a module's `__call__`; returns a function to call with the module's output."""
    if _active is None:
        return None
    return _active.enter(module, args, kwargs)


@dataclass(frozen=True)
class Summary:
    """What summary mode keeps of a tensor: enough to compare scale and spot NaN, not the values."""
    shape: tuple
    dtype: str
    mean: float
    std: float
    abs_max: float
    nonfinite: int
    checksum: int  # crc32 of the bytes: equal checksums, identical tensors

    @classmethod
    def of(cls, a: np.ndarray) -> "Summary":
        finite = a[np.isfinite(a)] if np.issubdtype(a.dtype, np.floating) else a
        return cls(a.shape, str(a.dtype), float(finite.mean()) if finite.size else 0.0,
                   float(finite.std()) if finite.size else 0.0,
                   float(np.abs(finite).max()) if finite.size else 0.0,
                   int(a.size - finite.size), zlib.crc32(np.ascontiguousarray(a).tobytes()))


class Tracer:
    """Records the tapped tensors of one forward, in execution order.

    `named_modules` yields (dotted path, module) for the traced root; `to_numpy` turns a
    framework tensor into a NumPy array.
    """

    def __init__(self, named_modules: Iterable, to_numpy: Callable, summary: bool = False,
                 keep: str | None = None, capture: str | None = None, on_tap: Callable | None = None):
        self.paths = {id(module): path for path, module in named_modules}
        self.to_numpy, self.summary, self.keep, self.capture = to_numpy, summary, keep, capture
        self.on_tap = on_tap
        self.records: dict[str, np.ndarray | Summary] = {}
        self.calls: dict[str, tuple] = {}  # path -> (args, kwargs, output), NumPy, for `capture`

    def store(self, name, x):
        a = np.asarray(self.to_numpy(x))
        keep = (self.keep,) if isinstance(self.keep, str) else (self.keep or ())
        if self.summary and not any(fnmatch.fnmatch(name, k) for k in keep):
            return Summary.of(a)
        return a

    def scope(self, module) -> Callable:
        path = self.paths.get(id(module), "")

        def tap(name, x):
            key = base = f"{path}.{name}" if path else name
            calls = 0
            while key in self.records:
                calls += 1
                key = f"{base}#{calls}"
            self.records[key] = self.store(key, x)
            if self.on_tap is not None:
                self.on_tap(key, x)
            return x

        return tap

    def enter(self, module, args, kwargs):
        path = self.paths.get(id(module))
        if path is None or self.capture is None or not fnmatch.fnmatch(path, self.capture):
            return None
        if path in self.calls:  # a repeated call: keep the first, as `replay` runs the first
            return None
        convert = lambda v: np.asarray(self.to_numpy(v)) if _is_tensor(v) else v  # noqa: E731
        inputs = ([convert(a) for a in args], {k: convert(v) for k, v in kwargs.items()})

        def leave(output):
            out = {k: convert(v) for k, v in output.items()} if isinstance(output, dict) else convert(output)
            self.calls[path] = (*inputs, out)

        return leave


def _is_tensor(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (dict, list))


@contextmanager
def recording(named_modules: Iterable, to_numpy: Callable, **options):
    global _active
    if _active is not None:
        raise RuntimeError("a trace is already being recorded")
    _active = Tracer(named_modules, to_numpy, **options)
    try:
        yield _active
    finally:
        _active = None
