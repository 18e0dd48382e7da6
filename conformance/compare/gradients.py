"""Gradient conformance: every framework's backward against the NumPy reference's.

The loss. A case's outputs out_k each get a seeded standard-normal cotangent c_k of the same
shape, and

    L = sum_k sum(out_k * c_k)        so  dL/d out_k = c_k,

which makes every gradient below a vector-Jacobian product c^T J: exactly what a backward
pass computes, fed a chosen cotangent. Why a random c and not L = sum(out) (c = ones):
- a wrong Jacobian J' goes unnoticed only if c^T (J' - J) = 0, which for a random Gaussian c
  happens with probability zero, so every gradient path is tested;
- ones are blind by construction where the math is symmetric: softmax rows sum to 1, so
  d sum(softmax(x)) / dx = 0 and everything upstream of a softmax would get an all-zero
  gradient that any bug in it reproduces; a layer norm's centred output sums to zero over its
  features the same way; and a transposed or permuted gradient of a sum of ones looks the same.

What is compared, per case: the gradient of L with respect to every floating input, every
weight (canonical name and `[in, out]` layout, mapped back from torch's `[out, in]` in
`conformance.weights.mapping`, the one place that knows it), and every traced activation (the same
keys as `Built.trace`, '#k' for a module's k-th call): "the total gradient w.r.t. that tensor".
How each framework gets them:
- numpy: `numpy_ref.autograd`, the hand-written backward, run in float64: the reference.
- torch: autograd. A tap (`trace.Tracer.on_tap`) registers `tensor.register_hook` on every
  tapped tensor that requires grad, so the hook receives that tensor's accumulated gradient.
- tf: one `tf.GradientTape`, watching the float inputs; the Keras variables and the tapped
  tensors (intermediate tensors recorded on the tape) are the targets of `tape.gradient`.
A tapped tensor that depends on no float input or weight (the sinusoidal encoding) has no
gradient in any framework and is left out; an entry whose output is such a constant declares
`differentiable=False` in the registry.

Tolerances (`conformance.compare.tolerance.gradient_tolerance`) bound each tensor's max-norm relative
error |a - r| <= scale_rtol max |r| (+ a tiny atol for all-zero tensors): a weight's gradient is
a sum over batch and positions whose terms may cancel to near zero, so an elementwise relative
error means nothing there, while the error of the sum stays proportional to the size of the
terms, which max |r| measures.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from conformance.spec import registry
from conformance.core import trace
from conformance.compare.tolerance import Comparison, compare, gradient_tolerance

UNFUSED_ONLY = ("scores", "probs")  # torch's fused SDPA computes these inside one kernel: never tapped


@dataclass(frozen=True)
class Gradients:
    """The gradients of L = sum_k sum(out_k * c_k), all NumPy, for one framework and case."""
    outputs: dict      # {output key: forward output}
    inputs: dict       # {float input name: dL/d input}
    params: dict       # {canonical weight name: dL/d weight, canonical layout}
    activations: dict  # {trace key: dL/d tapped tensor}, in forward (trace) order
    cotangents: dict = field(default_factory=dict)  # {output key: c_k}, float64

    def groups(self):
        return {"input": self.inputs, "param": self.params, "activation": self.activations}


def cotangents_for(outputs: dict, seed: int = 0) -> dict:
    """One seeded standard-normal float64 array per output key, drawn in sorted key order."""
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(np.shape(outputs[k])) for k in sorted(outputs)}


def gradients(built, inputs: dict, cotangents: dict | None = None, seed: int = 0) -> Gradients:
    """The gradients of `built` (a `conformance.backends.build.Built`) on NumPy `inputs`; `Built.gradients`."""
    if built.framework not in BACKWARDS:
        raise ValueError(f"framework must be one of {list(BACKWARDS)} for gradients; "
                         f"received framework={built.framework!r}")
    gradient_tolerance(built.dtype)  # a dtype with no gradient row is refused before any work
    return BACKWARDS[built.framework](built, inputs, cotangents, seed)


def _as_dict(out) -> dict:
    return out if isinstance(out, dict) else {"output": out}


def _numpy(built, inputs, cotangents, seed):
    from numpy_ref import autograd
    b, module = built.backend, built.module
    with trace.recording(b.named_modules(module), b.to_numpy) as t, autograd.recording(module) as tape:
        out = b.run(module, b.inputs(inputs, built.dtype), built.training)
    outputs = {k: np.asarray(v) for k, v in _as_dict(out).items()}
    cot = cotangents or cotangents_for(outputs, seed)
    cast = {k: np.asarray(c, outputs[k].dtype) for k, c in cot.items()}
    grads_in = tape.backward(cast if isinstance(out, dict) else cast["output"])
    acts = tape.activation_grads  # filled as the backward ran: put back in forward (trace) order
    ordered = {k: acts[k] for k in t.records if k in acts} | acts
    return Gradients(outputs, dict(grads_in), dict(tape.param_grads), ordered, cot)


def _torch(built, inputs, cotangents, seed):
    import torch
    from conformance.weights import mapping
    from conformance.backends import precision
    b, module = built.backend, built.module
    tensors = b.inputs(inputs, built.dtype, built.device)
    leaves = {k: t.requires_grad_() for k, t in tensors.items() if t.is_floating_point()}
    tapped, received = {}, {}

    def on_tap(key, x):  # the hook fires with the gradient accumulated over every use of x
        if isinstance(x, torch.Tensor) and x.requires_grad:
            tapped[key] = x
            x.register_hook(lambda g: received.__setitem__(key, g))

    with precision.policy(built), torch.enable_grad(), \
            trace.recording(b.named_modules(module), b.to_numpy, on_tap=on_tap):
        module.train(built.training)
        out = _as_dict(module(**tensors))
        outputs = {k: b.to_numpy(v) for k, v in out.items()}
        cot = cotangents or cotangents_for(outputs, seed)
        loss = sum((out[k] * torch.as_tensor(c, dtype=out[k].dtype, device=out[k].device)).sum()
                   for k, c in cot.items())
    names = list(registry.param_shapes(built.cfg))
    params = dict(module.named_parameters())
    targets = list(leaves.values()) + [params[mapping.torch_name(n)] for n in names]
    if torch.is_tensor(loss) and loss.requires_grad:
        grads = torch.autograd.grad(loss, targets, allow_unused=True)
    else:  # a constant output: nothing to differentiate
        grads = [None] * len(targets)
    grads = [np.zeros(tuple(t.shape), b.to_numpy(t).dtype) if g is None else b.to_numpy(g)
             for t, g in zip(targets, grads)]
    return Gradients(outputs, dict(zip(leaves, grads[:len(leaves)])),
                     {n: mapping.from_torch(n, g) for n, g in zip(names, grads[len(leaves):])},
                     {k: b.to_numpy(received[k]) for k in tapped if k in received}, cot)


def _tf(built, inputs, cotangents, seed):
    import tensorflow as tf
    b, module = built.backend, built.module
    tensors = b.inputs(inputs, built.dtype)
    leaves = {k: t for k, t in tensors.items() if t.dtype.is_floating}
    tapped = {}

    def on_tap(key, x):
        if tf.is_tensor(x) and x.dtype.is_floating:
            tapped[key] = x

    with tf.GradientTape() as tape, trace.recording(b.named_modules(module), b.to_numpy, on_tap=on_tap):
        tape.watch(list(leaves.values()))
        out = _as_dict(b.run(module, tensors, built.training))
        outputs = {k: b.to_numpy(v) for k, v in out.items()}
        cot = cotangents or cotangents_for(outputs, seed)
        loss = tf.add_n([tf.reduce_sum(out[k] * tf.constant(c, dtype=out[k].dtype)) for k, c in cot.items()])
    variables = dict(b.layer.named_weights(module))
    grads = tape.gradient(loss, {"inputs": leaves, "params": variables, "activations": tapped})

    def to_numpy(g, like):  # an input or weight the loss does not reach: zeros; tables: IndexedSlices
        return np.zeros(tuple(like.shape), like.dtype.name) if g is None else b.to_numpy(tf.convert_to_tensor(g))

    # a tapped tensor that depends on no watched tensor (a constant) gets None: left out, as in torch
    return Gradients(outputs, {k: to_numpy(g, leaves[k]) for k, g in grads["inputs"].items()},
                     {k: to_numpy(g, variables[k]) for k, g in grads["params"].items()},
                     {k: b.to_numpy(tf.convert_to_tensor(grads["activations"][k])) for k in tapped
                      if grads["activations"][k] is not None}, cot)  # tf.nest sorted the keys: trace order back


BACKWARDS = {"numpy": _numpy, "torch": _torch, "tf": _tf}


# ------------------------------------------------------------------------------------ one module alone

def _argument_names(module, framework, args, kwargs) -> dict:
    """{argument name: value} of a call, named by the module's forward (Keras: call) signature."""
    forward = module.call if framework == "tf" else module.forward
    return dict(inspect.signature(forward).bind_partial(*args, **kwargs).arguments)


def module_gradients(built, path: str, args: list, kwargs: dict, cotangent: np.ndarray) -> tuple[dict, dict]:
    """(input gradients by argument name, weight gradients by canonical name) of the submodule at
    `path` of `built` run alone as module(*args, **kwargs) on NumPy inputs, for
    L = sum(output * cotangent): one op's backward, fed the inputs and cotangent of your choice.
    `conformance.compare.replay.replay_gradients` feeds it the reference's."""
    if built.framework not in BACKWARDS:
        raise ValueError(f"framework must be one of {list(BACKWARDS)} for gradients; "
                         f"received framework={built.framework!r}")
    b, sub = built.backend, built.submodule(path)
    kwargs = {k: v for k, v in kwargs.items() if k != "training"}  # Keras records it; `built.training` rules
    named = _argument_names(sub, built.framework, args, kwargs)
    floats = {k: v for k, v in named.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"}
    tensors = {k: b.inputs({k: v}, built.dtype, built.device)[k] if isinstance(v, np.ndarray) else v
               for k, v in named.items()}
    prefix = f"{path}." if path else ""
    names = [n for n in registry.param_shapes(built.cfg) if n.startswith(prefix)]
    if built.framework == "numpy":
        from numpy_ref import autograd
        with autograd.recording(sub) as tape:
            out = b.run(sub, tensors, built.training)
        grads_in = tape.backward(np.asarray(cotangent, np.asarray(out).dtype))
        return ({k: grads_in[k] for k in floats}, {prefix + k: g for k, g in tape.param_grads.items()})
    if built.framework == "torch":
        import torch
        from conformance.weights import mapping
        from conformance.backends import precision
        for k in floats:
            tensors[k].requires_grad_()
        params = dict(sub.named_parameters())
        targets = [tensors[k] for k in floats] + [params[mapping.torch_name(n)[len(prefix):]] for n in names]
        with precision.policy(built), torch.enable_grad():
            sub.train(built.training)
            out = sub(**tensors)
            loss = (out * torch.as_tensor(cotangent, dtype=out.dtype, device=out.device)).sum()
            grads = torch.autograd.grad(loss, targets, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(targets, grads)]
        return ({k: b.to_numpy(g) for k, g in zip(floats, grads)},
                {n: mapping.from_torch(n, b.to_numpy(g)) for n, g in zip(names, grads[len(floats):])})
    import tensorflow as tf
    variables = {prefix + k: v for k, v in b.layer.named_weights(sub)}
    with tf.GradientTape() as tape:
        tape.watch([tensors[k] for k in floats])
        out = b.run(sub, tensors, built.training)
        loss = tf.reduce_sum(out * tf.constant(cotangent, dtype=out.dtype))
    grads = tape.gradient(loss, {"inputs": {k: tensors[k] for k in floats}, "params": variables},
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    to_numpy = lambda g: b.to_numpy(tf.convert_to_tensor(g))  # noqa: E731
    return ({k: to_numpy(g) for k, g in grads["inputs"].items()},
            {k: to_numpy(g) for k, g in grads["params"].items()})


# ------------------------------------------------------------------------------------ comparing

def _affine_scale(name: str, grads: dict) -> float | None:
    """A bias is the kernel's row for a constant-1 input feature (y = [x, 1] @ [kernel; bias]), so a
    Linear's [kernel; bias] gradient is compared as one tensor, on one scale. This matters for the key
    projection's bias: it adds q . b to every score of a query's row, which the softmax (shift-invariant
    along the keys) cancels, so its gradient is exactly zero and its computed value pure roundoff."""
    path, _, leaf = name.rpartition(".")
    kernel = f"{path}.kernel" if path else "kernel"
    if leaf != "bias" or kernel not in grads:
        return None
    return max(float(np.abs(grads[name]).max(initial=0.0)), float(np.abs(grads[kernel]).max(initial=0.0)))


def compare_gradient(name: str, actual, reference, tol, scale: float | None = None) -> Comparison:
    """`tolerance.compare` with the gradient row; `scale` (if larger) replaces the tensor's max |reference|."""
    c = compare(name, actual, reference, tol)
    if scale is None or not np.isfinite(c.max_abs) or not scale > c.scale:
        return c
    passed = c.max_abs <= tol.atol + tol.scale_rtol * scale
    return replace(c, max_rel=c.max_abs / scale, passed=passed, scale=scale,
                   detail=f"on the scale of the layer's [kernel; bias] gradient, {scale:.3g}")


@dataclass(frozen=True)
class GradientRow:
    """One tensor's gradient error: `op` is a trace key (group "activation"), a canonical weight
    name ("param") or an input name ("input"); `scale_error` is max |a - r| / max |r|."""
    op: str
    group: str
    result: Comparison

    @property
    def max_abs(self) -> float:
        return self.result.max_abs

    @property
    def scale_error(self) -> float:
        return self.result.max_rel

    @property
    def passed(self) -> bool:
        return self.result.passed


def backward_order(reference: Gradients) -> list[tuple[str, str]]:
    """(group, name) in the order a backward pass produces the gradients: the traced activations
    last to first (the reverse of the forward trace), each weight right after the first activation
    of its module in that order (its module's output: the weight's gradient needs it), the inputs last."""
    acts = list(reversed(list(reference.activations)))
    placed = {a: [] for a in acts}
    unplaced = []
    for name in reference.params:
        path = name.rpartition(".")[0]
        owner = next((a for a in acts if not path or a.startswith(path + ".")), None)
        (placed[owner] if owner else unplaced).append(name)
    order = []
    for a in acts:
        order += [("activation", a)] + [("param", p) for p in placed[a]]
    return order + [("param", p) for p in unplaced] + [("input", k) for k in reference.inputs]


def gradient_rows(reference: Gradients, actual: Gradients, dtype: str, absent=()) -> list[GradientRow]:
    """Every gradient's error in backward order, then any gradient present on one side only.
    `absent`: activation keys the framework is declared not to trace (torch's fused attention)."""
    tol = gradient_tolerance(dtype)
    rows = []
    for group, key in backward_order(reference):
        if group == "activation" and key in absent:
            continue
        got, want = actual.groups()[group], reference.groups()[group]
        if key not in got:
            rows.append(GradientRow(key, group, Comparison(key, np.inf, np.inf, (), False, "missing gradient")))
        else:
            scale = _affine_scale(key, want) if group == "param" else None
            rows.append(GradientRow(key, group, compare_gradient(key, got[key], want[key], tol, scale)))
    for group, got in actual.groups().items():
        for key in got:
            if key not in reference.groups()[group]:
                rows.append(GradientRow(key, group, Comparison(key, np.inf, np.inf, (), False, "unexpected gradient")))
            elif group == "activation" and key in absent:
                rows.append(GradientRow(key, group, Comparison(key, np.inf, np.inf, (), False,
                                                               "declared untraced, yet present")))
    return rows


def first_backward_divergence(reference: Gradients, actual: Gradients, dtype: str, absent=()) -> GradientRow | None:
    """The first gradient, in backward order, that leaves tolerance; None if all agree."""
    return next((r for r in gradient_rows(reference, actual, dtype, absent) if not r.passed), None)


def absent_activations(framework: str, cfg, keys) -> set:
    """The trace keys a framework does not record for `cfg`: torch's fused attention runs
    q k^T -> softmax -> @ v inside one kernel, so there are no scores or probs to tap."""
    if framework == "torch" and cfg.fused_attention:
        return {k for k in keys if k.rpartition(".")[2] in UNFUSED_ONLY}
    return set()


# ------------------------------------------------------------------------------------ the suite's checks

@lru_cache(maxsize=None)
def reference_gradients(name: str, variant: str, seed: int = 0) -> Gradients:
    """The float64 NumPy backward of one registry case (`suite.case_data`'s weights and inputs)."""
    from conformance.backends.build import build
    from conformance.suites.cases import case_data
    _, cfg, w, inputs, _ = case_data(name, variant, seed)
    return build("numpy", cfg, w, dtype="float64").gradients(seed=seed, **inputs)


def check_gradients(name: str, variant: str, framework: str, dtype: str, built=None,
                    reference: Gradients | None = None) -> list[Comparison]:
    """Every input, weight and activation gradient of one framework on one case against the
    reference backward; failures are named `<framework>/<dtype> <case> <group> <tensor path>`.
    `built` and `reference` let a caller pass a planted-bug build or a planted-bug reference."""
    from conformance.backends.build import build
    from conformance.suites.cases import case_data, case_id
    _, cfg, w, inputs, _ = case_data(name, variant)
    entry = registry.get(name)
    reference = reference or reference_gradients(name, variant)
    m = built or build(framework, cfg, w, dtype=dtype)
    actual = m.gradients(cotangents=reference.cotangents, **inputs)
    label = f"{framework}/{dtype} {case_id((name, variant))}"
    has = any(reference.groups().values()) or any(actual.groups().values())
    if has != entry.differentiable:
        return [Comparison(f"{label} gradients", np.inf, np.inf, (), False,
                           "has gradients although the registry declares differentiable=False" if has else
                           "no gradient at all although the registry declares the entry differentiable")]
    if not has:  # declared and found constant: that agreement is the check
        return [Comparison(f"{label} gradients", 0.0, 0.0, (), True, "nothing to differentiate, as declared")]
    absent = absent_activations(framework, cfg, reference.activations)
    return [replace(r.result, name=f"{label} {r.group} {r.op}")
            for r in gradient_rows(reference, actual, dtype, absent)]


def gradient_report(cfg, w: dict, inputs: dict, frameworks=("torch", "tf"), dtype: str = "float32",
                    seed: int = 0, reference: Gradients | None = None) -> dict[str, list[dict]]:
    """Per-op gradient error for reports (`tmirror report --train`): framework -> rows in backward
    order, each {"op", "group", "max_abs", "scale_error", "passed"}, against the float64 NumPy backward
    of L = sum_k sum(out_k * c_k) with seeded standard-normal c_k (`seed`); pass `reference` (that
    backward, already computed) to report several dtypes against one reference run."""
    from conformance.backends.build import build
    reference = reference or build("numpy", cfg, w, dtype="float64").gradients(seed=seed, **inputs)
    report = {}
    for framework in frameworks:
        actual = build(framework, cfg, w, dtype=dtype).gradients(cotangents=reference.cotangents, **inputs)
        rows = gradient_rows(reference, actual, dtype, absent_activations(framework, cfg, reference.activations))
        report[framework] = [{"op": r.op, "group": r.group, "max_abs": r.max_abs, "scale_error": r.scale_error,
                              "passed": r.passed} for r in rows]
    return report


def measure(cases=None, frameworks=("numpy", "torch", "tf"), dtypes=("float64", "float32")) -> list[dict]:
    """The evidence for the gradient rows: per registry case, framework and dtype, the worst
    scale error (max |a - r| / max |r|, a bias on its layer's scale) over every gradient, and where."""
    from conformance.backends.precision import supported
    from conformance.suites.cases import CASES, case_id
    rows = []
    for case in cases or CASES:
        for framework in frameworks:
            for dtype in dtypes:
                if (framework, dtype) == ("numpy", "float64") or not supported(framework, dtype, "cpu", case):
                    continue
                results = check_gradients(*case, framework, dtype)
                worst = max(results, key=lambda r: r.max_rel)
                rows.append({"case": case_id(case), "framework": framework, "dtype": dtype,
                             "worst": worst.max_rel, "where": worst.name, "passed": all(r.passed for r in results)})
    return rows
