"""Reverse-mode differentiation of the NumPy reference, written by hand.

    with autograd.recording(model) as tape:
        out = model(**inputs)                 # every module call keeps what its backward needs
    grads_in = tape.backward(cotangent)       # {input name: dL/dinput}, L = sum(out * cotangent)
    tape.param_grads                          # {canonical weight name: dL/dweight}
    tape.activation_grads                     # {trace key: dL/dtensor} for every tapped tensor

The chain rule, run backwards. A forward is a chain of modules y = f(x; w); given the
gradient dL/dy of a scalar loss L ("the cotangent"), each module's `backward` returns
dL/dx = (dy/dx)^T dL/dy and adds dL/dw = (dy/dw)^T dL/dy to its parameters' gradients.
Starting from the output and visiting the modules in the reverse of the order they ran,
every module receives the complete gradient of its output before it runs: that is all
reverse mode is. One backward costs about two forwards, whatever the number of
parameters, which is why training uses it and not finite differences.

What a tape is. While `recording(model)` is active, every `Module.__call__` in the tree
pushes a `Saved` record: the call's arguments by name, every tensor it tapped (the same
`tap("probs", ...)` the trace uses: the intermediate values backward needs are exactly
the ones worth naming) and its output. Nothing else in the forward code changes; the
one exception is Dropout, whose keep mask is drawn inside its forward and kept with
`save` (nothing else could recover it: a kept unit whose input is 0 looks dropped).

Why a stack per module, and why pop. A module may run several times in one forward
(the Transformer's shared embedding table, its dropout on source and target). The
backward visits calls in reverse, so the call it needs is always the most recent one
not yet consumed: the top of that module's stack. `saved(module)` pops it, which also
frees its tensors as the backward moves down the model. (`last_output(child)` reads a
child's output before the child's backward pops it: the MLM head's tied decoder needs its
layer norm's output.)

Activation gradients carry the forward trace's names. The k-th call of a module
(counted from 0, in forward order) records its taps under `path.name#k` (`path.name`
for k = 0), as `conformance.core.trace` does; `Saved.tap(name, grad)` in a backward stores
dL/d(that tensor) under the same key. A tensor tapped twice (a layer norm's output that
is also its layer's output) gets the same gradient under both names.

This module has no twin on purpose: torch_impl and tf_impl differentiate with their
libraries' own autograd (`torch.autograd`, `tf.GradientTape`), which is what the gradient
suite (`conformance/compare/gradients.py`) compares against this hand-written one.

Off by default, free when off: with no tape recording, `entering` and the trace's
`tap_for` each cost one global lookup per module call.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from functools import lru_cache

import numpy as np

from conformance.core import trace

_recording: "Tape | None" = None  # the tape the forward is writing to
_running: "Tape | None" = None    # the tape whose backward is running


class Saved:
    """What one forward call of one module kept for its backward."""

    def __init__(self, tape: "Tape", path: str, call: int, inputs: dict):
        self.tape, self.path, self.call = tape, path, call
        self.inputs = inputs   # forward's arguments by parameter name, defaults filled in
        self.taps: dict = {}   # tap name -> the tensor tapped in this call
        self.extras: dict = {}  # what forward kept with `save` (Dropout's keep mask)
        self.output = None

    def key(self, name: str) -> str:
        """The trace key of tap `name` in this call: `path.name`, then `path.name#1`, ..."""
        base = f"{self.path}.{name}" if self.path else name
        return base if self.call == 0 else f"{base}#{self.call}"

    def tap(self, name: str, grad):
        """Record dL/d(tapped tensor `name`) under its trace key; return `grad` unchanged."""
        if name not in self.taps:
            raise RuntimeError(f"backward taps {self.key(name)!r}, which the forward did not tap")
        self.tape.activation_grads[self.key(name)] = grad
        return grad


class Tape:
    """The calls of one recorded forward, and the gradients its backward produces."""

    def __init__(self, root):
        self.root = root
        self.paths = {id(module): path for path, module in root.named_modules()}
        self.stacks: dict[int, list[Saved]] = {}  # id(module) -> its unconsumed calls, oldest first
        self.calls: dict[int, int] = {}           # id(module) -> calls so far (k of `#k`)
        self.param_grads: dict[str, np.ndarray] = {}
        self.activation_grads: dict[str, np.ndarray] = {}
        self.tapped: list[str] = []  # trace keys in forward order
        self.done = False

    def enter(self, module, args, kwargs) -> Saved | None:
        path = self.paths.get(id(module))
        if path is None:  # not part of the recorded model (another framework's module)
            return None
        bound = _signature(type(module).forward).bind(module, *args, **kwargs)
        bound.apply_defaults()
        inputs = {name: value for name, value in bound.arguments.items() if name != "self"}
        call = self.calls.get(id(module), 0)
        self.calls[id(module)] = call + 1
        saved = Saved(self, path, call, inputs)
        self.stacks.setdefault(id(module), []).append(saved)
        return saved

    def keeping(self, module, tap):
        """The trace's `tap`, also keeping each tapped tensor in the module's current call."""
        stack = self.stacks.get(id(module))
        if not stack:
            return tap
        current = stack[-1]

        def keep(name, x):
            current.taps[name] = x
            self.tapped.append(current.key(name))
            return tap(name, x)

        return keep

    def backward(self, cotangent) -> dict[str, np.ndarray]:
        """dL/d(each floating input of the recorded call), L = sum(output * cotangent).

        `cotangent` has the output's structure: an array, or a dict of arrays (a missing
        output key counts as zeros). Fills `param_grads` (every parameter, zeros where
        unused) and `activation_grads` (in forward order, as a trace). Runs once per recording.
        """
        global _running
        if self.done:
            raise ValueError("backward must run once per recording; received a second call "
                             "(record the forward again)")
        calls = self.stacks.get(id(self.root), [])
        if len(calls) != 1:
            raise ValueError(f"recording must hold exactly one call of the model; received {len(calls)}")
        for stack in self.stacks.values():
            for saved in stack:
                if saved.inputs.get("cache") is not None:
                    raise ValueError(f"backward needs a forward without a key/value cache; received a "
                                     f"call with cache= ({saved.path or 'the model'}): the cache is not "
                                     f"differentiated")
        root = calls[0]
        grad = _structured(cotangent, root.output)
        self.param_grads = {name: np.zeros_like(p) for name, p in self.root.named_parameters()}
        self.activation_grads = {}
        self.done = True
        _running = self
        try:
            grads = self.root.backward(grad)
        finally:
            _running = None
        self.activation_grads = {k: self.activation_grads[k] for k in self.tapped if k in self.activation_grads}
        names = [n for n, v in root.inputs.items() if _floating(v)]
        grads = () if grads is None else grads if isinstance(grads, tuple) else (grads,)
        if len(grads) != len(names):
            raise RuntimeError(f"{type(self.root).__name__}.backward returned {len(grads)} "
                               f"gradients for the floating inputs {names}")
        return dict(zip(names, grads))


@lru_cache(maxsize=None)
def _signature(forward):
    return inspect.signature(forward)


def _floating(v) -> bool:
    return isinstance(v, np.ndarray) and v.dtype.kind == "f"


def _structured(cotangent, output):
    """The cotangent as the output's structure, checked: an array, or a full dict."""
    if not isinstance(output, dict):
        if isinstance(cotangent, dict):
            if set(cotangent) != {"output"}:
                raise ValueError(f"cotangent must be an array or {{'output': array}} for an array "
                                 f"output; received keys {sorted(cotangent)}")
            cotangent = cotangent["output"]
        return _checked("cotangent", cotangent, output)
    if not isinstance(cotangent, dict):
        raise ValueError(f"cotangent must be a dict over the output keys {sorted(output)}; "
                         f"received {type(cotangent).__name__}")
    unknown = sorted(set(cotangent) - set(output))
    if unknown:
        raise ValueError(f"cotangent keys must be output keys {sorted(output)}; received {unknown}")
    return {k: _checked(f"cotangent[{k!r}]", cotangent[k], v) if k in cotangent else np.zeros_like(v)
            for k, v in output.items()}


def _checked(arg, grad, like):
    grad = np.asarray(grad)
    if grad.shape != like.shape:
        raise ValueError(f"{arg} must have the output's shape {like.shape}; received shape {grad.shape}")
    return grad.astype(like.dtype, copy=False)


# ------------------------------------------------------------------ what Module and backward call

def entering(module, args, kwargs) -> Saved | None:
    """Called by `Module.__call__`: a new `Saved` for this call while recording, else None."""
    if _recording is None:
        return None
    return _recording.enter(module, args, kwargs)


def save(module, **values) -> None:
    """Keep values a backward needs that no input or tap holds (Dropout's drawn keep mask)."""
    if _recording is not None and _recording.stacks.get(id(module)):
        _recording.stacks[id(module)][-1].extras.update(values)


def saved(module) -> Saved:
    """Pop `module`'s most recent unconsumed call: the one its backward is undoing now."""
    if _running is None:
        raise RuntimeError("backward runs only inside Tape.backward")
    stack = _running.stacks.get(id(module))
    if not stack:
        raise RuntimeError(f"no recorded call left for {_running.paths.get(id(module), module)!r}")
    return stack.pop()


def peek(module) -> Saved:
    """`module`'s most recent unconsumed call, left on its stack: a model reading a child's taps (the
    MoE routing the load-balancing loss was computed from) before the child's backward pops it."""
    return _running.stacks[id(module)][-1]


def last_output(module):
    """The output of `module`'s most recent unconsumed call, read before its backward pops it."""
    return _running.stacks[id(module)][-1].output


def accumulate(module, name: str, grad) -> None:
    """Add `grad` to dL/d(`module`.`name`): a weight used twice (a tied table) sums both uses."""
    path = _running.paths[id(module)]
    _running.param_grads[f"{path}.{name}" if path else name] += grad


def sum_to_shape(grad, shape: tuple):
    """Backward of broadcasting: a value copied along an axis gets the sum of the copies' gradients.

    (1, T, D) position embeddings added to (B, T, D) token embeddings: d position = sum over B.
    """
    extra = grad.ndim - len(shape)
    grad = grad.sum(axis=tuple(range(extra))) if extra else grad
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=axes, keepdims=True) if axes else grad


def constant_keys(model, keys) -> list[str]:
    """The trace keys among `keys` (in their order) of tensors that depend on no float input or weight:
    the taps each module of `model` declares in `constant_taps`, at every call (`#k`). Neither torch
    nor TensorFlow has a gradient for them, so the reference's backward records none either."""
    constants = {f"{path}.{name}" if path else name for path, m in model.named_modules() for name in m.constant_taps}
    return [k for k in keys if k.split("#")[0] in constants]


@contextmanager
def recording(model):
    """Record `model`'s next forward for `Tape.backward`. One recording at a time."""
    global _recording
    if _recording is not None:
        raise RuntimeError("a tape is already recording")
    tape = Tape(model)
    _recording = tape
    trace._saving = tape.keeping
    try:
        yield tape
    finally:
        _recording = None
        trace._saving = None
