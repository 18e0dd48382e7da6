"""The extra passes a Keras-backend subprocess (`keras_backends._child`) makes over one built case:
gradients through the backend's own autodiff, `jax.jit`, and a record of the Keras ops that compute a
float64 tensor in float32 on that backend. Runs inside the child only (Keras already on its backend).

    grads = gradients(m, inputs, cotangents)   # {"input/x": dL/dx, "param/query.kernel": ...}, NumPy
    compiled = jit(m, inputs, eager)           # jax: jitted outputs and each module jitted alone
    with downcasts("jax") as seen: m(**inputs) # seen: the DOWNCASTS ops called on a float64 tensor

L = sum_k sum(out_k * c_k), the loss `Built.gradients` differentiates in every framework, so the
parent compares these with the float64 NumPy backward under the gradient tolerance row.
"""
from __future__ import annotations

import contextlib
import inspect

import numpy as np

from conformance.backends.base import as_dict

# Keras ops that compute a float64 tensor in float32 on a backend (`keras_backends.KNOWN` says where in
# Keras's source): the child records which of them a case calls, so a float64 column is held to the
# float64 row exactly where none is called
DOWNCASTS = {"torch": ("matmul", "mean", "maximum"),
             "jax": ("mean", "var", "cos", "sin", "tanh", "dot_product_attention")}


@contextlib.contextmanager
def downcasts(backend: str):
    """A context in which each `DOWNCASTS[backend]` op of `keras.ops` records its name in the yielded
    set when called with a float64 tensor (tf_impl looks the ops up on `keras.ops` at call time)."""
    import keras
    seen, originals = set(), {name: getattr(keras.ops, name) for name in DOWNCASTS.get(backend, ())}

    def wrap(name, op):
        def recorded(*args, **kwargs):
            if any(keras.ops.is_tensor(a) and keras.backend.standardize_dtype(a.dtype) == "float64" for a in args):
                seen.add(name)
            return op(*args, **kwargs)
        return recorded

    for name, op in originals.items():
        setattr(keras.ops, name, wrap(name, op))
    try:
        yield seen
    finally:
        for name, op in originals.items():
            setattr(keras.ops, name, op)


def gradients(m, inputs: dict, cotangents: dict) -> dict[str, np.ndarray]:
    """dL/d every float input ("input/NAME") and weight ("param/CANONICAL NAME") through the backend's
    own autodiff: torch.autograd on the torch tensors Keras's variables hold, jax.grad of
    `stateless_call` on jax."""
    import keras
    tensors = m.backend.inputs(m.check_inputs(inputs), m.dtype)
    floats = [k for k, t in tensors.items() if "float" in keras.backend.standardize_dtype(t.dtype)]
    names = {id(v): k for k, v in m.backend.parameters(m.module).items()}
    with m.policy():
        grads_x, grads_w = (_torch if keras.backend.backend() == "torch" else _jax)(m, tensors, floats, cotangents)
    return {**{f"input/{k}": g for k, g in grads_x.items()},
            **{f"param/{names[id(v)]}": g for v, g in grads_w}}


def _loss(out, cotangents, np_to):
    out = as_dict(out)
    return sum((out[k] * np_to(c, out[k])).sum() for k, c in cotangents.items())


def _torch(m, tensors, floats, cotangents):
    import torch
    leaves = {k: tensors[k].detach().requires_grad_(True) for k in floats}
    variables = list(m.module.trainable_variables)
    out = m.backend.run(m.module, {**tensors, **leaves}, m.training)
    loss = _loss(out, cotangents, lambda c, o: torch.as_tensor(c, dtype=o.dtype, device=o.device))
    grads = torch.autograd.grad(loss, list(leaves.values()) + [v.value for v in variables], allow_unused=True)
    numpy = [np.zeros(tuple(t.shape)) if g is None else g.detach().cpu().numpy() for g, t in
             zip(grads, list(leaves.values()) + [v.value for v in variables])]
    return dict(zip(leaves, numpy[:len(leaves)])), list(zip(variables, numpy[len(leaves):]))


def _jax(m, tensors, floats, cotangents):
    import jax
    import jax.numpy as jnp
    module = m.module
    trainable = [v.value for v in module.trainable_variables]
    fixed = [v.value for v in module.non_trainable_variables]
    rest = {k: t for k, t in tensors.items() if k not in floats} | _training(module, m.training)

    def loss(train, x):
        out, _ = module.stateless_call(train, fixed, **rest, **x)
        return _loss(out, cotangents, lambda c, o: jnp.asarray(c, dtype=o.dtype))

    g_train, g_x = jax.grad(loss, argnums=(0, 1))(trainable, {k: tensors[k] for k in floats})
    return ({k: np.asarray(g) for k, g in g_x.items()},
            list(zip(module.trainable_variables, [np.asarray(g) for g in g_train])))


def jit(m, inputs: dict, eager: dict, modules: bool = True, perturb: str | None = None) -> dict:
    """The model under `jax.jit` of `stateless_call` (jax only): its outputs, their max abs difference from
    the eager outputs `eager`, and each module jitted alone on the input the eager module got, against
    the eager module's output, as each module returns (the innermost first): {"outputs", "vs_eager",
    "modules": [(path, max abs or None where it does not compile)], "errors": {path: one line}}; the
    module replay (one compilation a module, most of the time) only with `modules`.
    `perturb`: a module path whose output is shifted by 1e-3 under jit only (a planted change to find)."""
    tensors = m.backend.inputs(m.check_inputs(inputs), m.dtype)
    with m.policy():
        calls = {}
        if modules:
            m.trace(capture="*", **inputs)  # every module's first call, eager: (args, kwargs, output)
            calls = {path: call for path, call in m.calls.items() if path}
        with _perturbed(m, perturb):
            outputs = {k: np.asarray(v) for k, v in
                       as_dict(_jitted(m.module, [], tensors | _training(m.module, m.training))).items()}
            replayed, errors = [], {}
            for path, (args, kwargs, out) in calls.items():
                try:
                    got = _jitted(m.submodule(path), [m.convert(a) for a in args],
                                  {k: m.convert(v) for k, v in kwargs.items()})
                    replayed.append((path, _max_abs(got, out)))
                except Exception as e:  # noqa: BLE001  a module that jit cannot trace alone is named, not fatal
                    replayed.append((path, None))
                    errors[path] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return {"outputs": outputs, "vs_eager": {k: _max_abs(outputs[k], eager[k]) for k in outputs},
            "modules": replayed, "errors": errors, "replayed": modules}


def _training(module, training: bool) -> dict:
    """{"training": training} where the layer's call takes it (`stateless_call` calls `call` as it is;
    the dropout case runs in training mode, its masks given)."""
    return {"training": training} if "training" in inspect.signature(module.call).parameters else {}


def _jitted(module, args, kwargs):
    """`module.stateless_call` under jax.jit: the array arguments traced, the others (flags, None) static."""
    import jax
    arrays = {k: v for k, v in kwargs.items() if hasattr(v, "shape")}
    static = {k: v for k, v in kwargs.items() if k not in arrays}
    train = [v.value for v in module.trainable_variables]
    fixed = [v.value for v in module.non_trainable_variables]
    traced = [i for i, a in enumerate(args) if hasattr(a, "shape")]

    def call(train, fixed, positional, arrays):
        given = list(args)
        for i, a in zip(traced, positional):
            given[i] = a
        out, _ = module.stateless_call(train, fixed, *given, **arrays, **static)
        return out

    return jax.jit(call)(train, fixed, [args[i] for i in traced], arrays)


@contextlib.contextmanager
def _perturbed(m, path: str | None):
    """The module at `path` returns its output + 1e-3 while traced by jax (under jit), eagerly as it was."""
    if not path:
        yield
        return
    import jax
    sub = m.submodule(path)
    original = sub.call

    def call(*args, **kwargs):
        out = original(*args, **kwargs)
        return out + 1e-3 if isinstance(out, jax.core.Tracer) else out

    object.__setattr__(sub, "call", call)
    try:
        yield
    finally:
        object.__delattr__(sub, "call")


def _max_abs(a, b) -> float:
    """The largest |a - b| over a tensor or a dict of them (NumPy or the backend's)."""
    if isinstance(b, dict):
        return max((_max_abs(a[k], b[k]) for k in b), default=0.0)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max()) if a.size else 0.0
