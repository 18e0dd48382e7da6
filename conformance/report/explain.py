"""`tmirror explain COMPONENT`: one component on numbers small enough to read.

A walkthrough is a declaration: the example inputs worth reading, a config small enough to
print, and the steps, each a trace name. A component's is in `WALKTHROUGHS` below, with the
library layers that check it; a model's is in its family's declaration (`Family.walkthrough`),
checked by the family's `transformers` class and any torch layers it names. Nothing
shown is typed by hand:

- every value comes from running the mirrors through the harness (`build(...).trace(...)`):
  the NumPy reference in float64, PyTorch and Keras in float64 and float32;
- the expression of a step is the reference's own source line that taps it, found by
  searching `numpy_ref` for `("<name>",`, so it cannot drift from the code;
- sub-steps the reference computes inside one tap (softmax's max, shift, exp, sum, divide;
  layer norm's mean and variance) come from running the reference's pure function line
  by line (`intermediates`): each line's source with the value it computed, and the values
  of the expressions nested in it;
- the library's own call (`nn.MultiheadAttention`, `keras.layers.LayerNormalization`,
  `transformers.BertModel`, ...) is run on the same weights and inputs, and its value set
  against the reference at the steps it exposes. A row marked "named" is a known
  difference (a default epsilon, a GELU variant, a float32 constant in a float64 layer), named in
  a line beside it and not held to a tolerance.

    text = explain("multi_head_attention").render("text")   # or "md"
    write_all("docs/explain")                                # docs/explain/<name>.md, every entry
"""
from __future__ import annotations

import ast
import functools
import inspect
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tabulate import tabulate

from conformance import weights
from conformance.backends import build
from conformance.compare import tolerance
from conformance.core.config import ATTENTION_IMPLS
from conformance.oracles import layers as oracles
from conformance.core import files, trace
from conformance.spec import families, registry
from conformance.spec.family import Step
from conformance.spec.leaves import TORCH_CONV
from numpy_ref.activations import dropout, softmax
from numpy_ref.attention import scaled_dot_product_attention
from numpy_ref.embeddings import sinusoidal_encoding
from numpy_ref.linear import linear
from numpy_ref.linear_attention import elu_feature_map, linear_attention, random_feature_map
from numpy_ref.normalization import layer_norm, rms_norm
from numpy_ref.patch_embedding import patchify
from numpy_ref.relative_position import relative_position_bucket
from numpy_ref.rotary import apply_rotary
from numpy_ref.tiled_attention import tiled_attention
from conformance.oracles.transformers import transformers_model

WIDTH = 100  # columns, text and Markdown alike
TWINS = (("torch", "float64"), ("torch", "float32"), ("tf", "float64"), ("tf", "float32"))
NAMES = {"numpy": "NumPy", "torch": "PyTorch", "tf": "Keras"}
FORMATS = ("text", "md")


# -------------------------------------------------------------------------------- declarations

@dataclass(frozen=True)
class Library:
    """One library call's value at one step, computed on the walkthrough's weights and inputs."""
    op: str
    call: str                  # the call, as a reader would write it
    value: np.ndarray
    differs: str = ""          # a known difference, named: shown, not held to a tolerance
    where: np.ndarray | None = None  # compare only these positions (dropout: the units both keep)
    dtype: str = "float64"


@dataclass(frozen=True)
class Inner:
    """Run the reference's pure function `fn(*args)` line by line; its result is the op's value."""
    fn: Callable
    args: tuple
    op: str  # the trace name the function's return value reproduces


@dataclass(frozen=True)
class Walkthrough:
    name: str
    summary: str                       # one line: what the example shows
    config: dict                       # overrides of the registry's tiny config
    inputs: Callable                   # (cfg) -> dict of NumPy inputs, the default variant's example
    steps: tuple
    inner: Callable | None = None      # (module, w, inputs, records) -> list[Inner]
    library: Callable | None = None    # (cfg, w, inputs, records, calls) -> list[Library]
    capture: str | None = None         # module paths whose call inputs `library` needs
    math: str = ""                     # keep only the reference docstring's paragraphs naming this
    shows: tuple = ()                  # the Config fields worth printing beside d_model


# -------------------------------------------------------------------------------- running

@dataclass
class Line:
    """One line of a reference function: its source, the value it assigned, nested values."""
    lineno: int
    source: str
    value: object
    nested: list = field(default_factory=list)  # (expression source, value), innermost first


@dataclass
class Explained:
    walkthrough: Walkthrough
    variant: str
    cfg: object
    weights: dict
    inputs: dict
    reference: dict                     # trace name -> float64 NumPy value
    twins: dict                         # (framework, dtype) -> trace
    expressions: dict                   # op -> (file, line number, source line)
    inner: list                         # (Inner, [Line])
    library: list                       # [Library]
    seconds: float = 0.0

    def difference(self, op, framework, dtype) -> float:
        return _max_abs(self.twins[framework, dtype][op], self.reference[op])

    def render(self, fmt: str = "text") -> str:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {list(FORMATS)}; received format={fmt!r}")
        return _render(self, fmt)


def explain(name: str, variant: str = "default") -> Explained:
    """Run the walkthrough of registry entry `name` (every framework, float64 and float32)."""
    entry = registry.get(name)
    if variant not in entry.variants:
        raise ValueError(f"variant must be one of {list(entry.variants)}; received variant={variant!r}")
    declared = variant_walkthroughs().get((name, variant))  # a variant worth reading on its own example
    wt = declared or walkthroughs().get(name)
    if wt is None:
        raise ValueError(f"{name!r} has no walkthrough yet; explained: {', '.join(walkthroughs())}")
    own = variant == "default" or declared is not None
    start = time.perf_counter()
    cfg = entry.config(variant)
    layers = wt.config.get("num_layers", cfg.num_layers)  # fewer layers keep the first layers' types
    cfg = cfg.replace(**wt.config, **({"layer_types": cfg.layer_types[:layers]} if cfg.layer_types else {}))
    w = {k: np.round(v.astype(np.float64), 2) for k, v in weights.initialize(cfg, seed=0, std=0.5).items()}
    inputs = wt.inputs(cfg) if own else entry.inputs(cfg, variant, batch=1, length=4)
    reference_build = build("numpy", cfg, w, dtype="float64")
    _, reference = reference_build.trace(capture=wt.capture, **inputs)
    calls = getattr(reference_build, "calls", {})
    twins = {(fw, dt): build(fw, cfg, w, dtype=dt).trace(**inputs)[1] for fw, dt in TWINS}
    steps = [s for s in wt.steps if s.op in reference]  # a variant may not run every op (fused)
    expressions = {s.op: expression(reference_build.module, s.op) for s in steps}
    inner = [(i, intermediates(i.fn, *i.args)) for i in (wt.inner(reference_build.module, w, inputs, reference)
                                                         if wt.inner else [])]
    library = wt.library(cfg, w, inputs, reference, calls) if wt.library and own else []
    return Explained(wt, variant, cfg, w, inputs, reference, twins, expressions, inner, library,
                     time.perf_counter() - start)


def walkthrough(name: str, variant: str = "default", fmt: str = "text") -> str:
    return explain(name, variant).render(fmt)


def write_all(out_dir="docs/explain", fmt: str = "md", names=None) -> list[Path]:
    """Write `<out_dir>/<registry name>.md` (.txt for fmt="text") for every registry entry, or `names`,
    and `<name>-<variant>.md` for each of their variants with a walkthrough of its own."""
    out = files.directory(out_dir, "walkthrough directory")
    paths = []
    chosen = list(names or registry.ENTRIES)
    for name, variant in [(n, "default") for n in chosen] + [k for k in variant_walkthroughs() if k[0] in chosen]:
        stem = name if variant == "default" else f"{name}-{variant}"
        path = out / f"{stem}.{'md' if fmt == 'md' else 'txt'}"
        paths.append(files.write(path, walkthrough(name, variant, fmt=fmt) + "\n", "walkthrough"))
    if names is None:  # the techniques, which are no registry entry of their own
        path = out / f"lora.{'md' if fmt == 'md' else 'txt'}"
        paths.append(files.write(path, lora(fmt) + "\n", "walkthrough"))
    return paths


def expression(module, op: str) -> tuple[str, int, str]:
    """(file, line number, source line) of the reference line that taps `op`."""
    path, _, name = op.split("#")[0].rpartition(".")
    owner = dict(module.named_modules())[path]
    needle = f'("{name}",'
    for cls in type(owner).__mro__:
        if not cls.__module__.startswith("numpy_ref") or "forward" not in vars(cls):
            continue
        module = sys.modules[cls.__module__]
        functions = [f for _, f in inspect.getmembers(module, inspect.isfunction)  # the forward's helpers
                     if f.__module__ == module.__name__ and not f.__name__.endswith("backward")]
        functions = sorted(functions, key=lambda f: (not _taps_for_impl(owner, f), f.__code__.co_firstlineno))
        methods = [f for n, f in vars(cls).items()  # what the forward calls on self (a model's head)
                   if inspect.isfunction(f) and n != "forward" and not n.endswith("backward")]
        for fn in [cls.forward, *methods, *functions]:
            lines, first = inspect.getsourcelines(fn)
            for i, line in enumerate(lines):
                if needle in line:
                    return _relative(inspect.getsourcefile(cls)), first + i, line.strip()
    raise ValueError(f"no line of numpy_ref taps {name!r} for op {op!r}")


def _taps_for_impl(owner, fn) -> bool:
    """Does `fn` hold the tap of `owner`'s attention implementation? Fused and tiled attention tap their
    context in `attention` itself, not in the reference lines of `scaled_dot_product_attention`."""
    impl = getattr(getattr(owner, "cfg", None), "attention_impl", "reference")
    return impl != "reference" and fn.__name__ == "attention"


def intermediates(fn: Callable, *args) -> list[Line]:
    """Run `fn(*args)` and return each executed line with the value it gave.

    A line event fires before its line runs; the next event (line or return) sees what it
    assigned. Nested expressions (calls and arithmetic inside the line) are evaluated again
    on the locals as they were before the line ran: the reference's own text, evaluated.
    """
    plain = getattr(fn, "__func__", fn)  # a bound method runs bound; its code and source are the function's
    code = plain.__code__
    source, first = inspect.getsourcelines(plain)
    bound = inspect.signature(fn).bind(*args)
    lines: list[Line] = []
    pending: list = []  # [lineno, locals before the line]

    def local(frame, event, arg):
        if event in ("line", "return") and pending:
            lineno, before = pending.pop()
            text = source[lineno - first].strip()
            value = _assigned(text, frame.f_locals, arg if event == "return" else None)
            if value is not _NOTHING:
                lines.append(Line(lineno, text, value, _nested(text, before, plain.__globals__)))
        if event == "line":
            pending.append((frame.f_lineno, dict(frame.f_locals)))
        return local

    def calls(frame, event, arg):
        return local if frame.f_code is code else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        fn(*bound.args, **bound.kwargs)
    finally:
        sys.settrace(previous)
    return lines


_NOTHING = object()


def _statement(text):
    try:
        return ast.parse(text.split("  #")[0].strip()).body[0]
    except SyntaxError:  # `if ...:` and other headers
        return None


def _assigned(text, after, returned):
    node = _statement(text)
    if isinstance(node, ast.Return):
        return returned
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
        return after.get(node.targets[0].id, _NOTHING)
    return _NOTHING


def _nested(text, before, globals_):
    """The calls and arithmetic inside a line's expression, innermost first, on `before`."""
    node = _statement(text)
    if not isinstance(node, (ast.Assign, ast.Return)) or node.value is None:
        return []
    out, seen = [], set()
    for sub in _post_order(node.value):
        if sub is node.value or not isinstance(sub, (ast.BinOp, ast.Call)):
            continue
        src = ast.unparse(sub)
        if src in seen:
            continue
        seen.add(src)
        try:
            value = eval(compile(ast.Expression(sub), "<reference>", "eval"), globals_, dict(before))
        except Exception:  # noqa: BLE001 - an expression that needs the line's own result: not shown
            continue
        if isinstance(value, np.ndarray) and value.ndim:
            out.append((src, value))
    return out


def _post_order(node):
    for child in ast.iter_child_nodes(node):
        yield from _post_order(child)
    yield node


def _relative(path):
    parts = Path(path).parts
    return "/".join(parts[parts.index("numpy_ref"):]) if "numpy_ref" in parts else path


def _max_abs(a, b, where=None) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return math.inf
    d = np.abs(a - b)
    if where is not None:
        d = d[where]
    both_inf = np.isinf(a) & np.isinf(b) & (a == b)
    return float(np.where(both_inf[where] if where is not None else both_inf, 0, d).max()) if d.size else 0.0


def within(actual, reference, dtype: str, where=None) -> bool:
    """Does `actual` pass the suite's comparison against `reference` under the `dtype` row?"""
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    if where is not None:
        actual, reference = actual[where], reference[where]
    return tolerance.compare("explain", actual, reference, tolerance.TOLERANCES[dtype]).passed


# -------------------------------------------------------------------------------- rendering

def _render(ex: Explained, fmt: str) -> str:
    md = fmt == "md"
    wt, cfg = ex.walkthrough, ex.cfg
    entry = registry.get(wt.name)
    module = inspect.getmodule(entry.implementation("numpy_ref"))
    out: list[str] = []

    def heading(text, level):
        if md:
            out.extend([f"{'#' * level} {text}", ""])
        else:
            out.extend([text, "=-~"[level - 1] * min(len(text), WIDTH), ""])

    def block(text, lang=""):
        body = [piece for line in text.splitlines() for piece in _fold(line.rstrip(), WIDTH - 4)]
        out.extend(([f"```{lang}"] + body + ["```"]) if md else ["    " + b if b else "" for b in body])
        out.append("")

    def para(text):
        out.extend(_wrap(text, WIDTH) + [""])

    def table(rows, headers):
        if md:  # a | inside a cell would end it
            rows = [[str(c).replace("|", "\\|") for c in r] for r in rows]
        out.extend(tabulate(rows, headers, tablefmt="github" if md else "simple",
                            disable_numparse=True).splitlines() + [""])

    variant = "" if ex.variant == "default" else f", variant {ex.variant}"
    heading(f"{wt.name}: {entry.cls}{variant}", 1)
    para(wt.summary)
    block(_docstring(module, wt.math))
    overrides = tuple(registry.get(wt.name).variants[ex.variant].overrides)
    fields = {k: getattr(cfg, k) for k in dict.fromkeys(("d_model",) + wt.shows + overrides)}
    para("Config (the registry's tiny config with these sizes): "
         + ", ".join(f"{k}={v}" for k, v in fields.items()) + ".")
    para("Weights: `weights.initialize(cfg, seed=0, std=0.5)` rounded to 2 decimals, loaded into every "
         "mirror. Values below: the NumPy reference in float64; PyTorch and Keras built with "
         "`build(framework, cfg, w, dtype)` in float64 and float32.")
    heading("Inputs", 2)
    for key, value in ex.inputs.items():
        block(f"{key} {_shape(value)} {value.dtype}\n{_array(value)}")
    def inside(inner, lines):
        fn = getattr(inner.fn, "__func__", inner.fn)
        para(f"Inside this op: `{fn.__module__}.{fn.__qualname__}` run line by line on this example, "
             f"each line with the values it computes; its result is the traced `{inner.op}`.")
        for line in lines:
            block(f"{_relative(inspect.getsourcefile(fn))}:{line.lineno}\n    {line.source}", "python")
            for src, value in line.nested:
                block(f"{src} {_shape(value)}\n{_array(value)}")
            values = line.value if isinstance(line.value, tuple) else (line.value,)  # a function's results
            if all(isinstance(v, np.ndarray) for v in values):
                block("\n".join(f"= {_shape(v)}\n{_array(v)}" for v in values))
            else:
                block(f"= {line.value!r}")

    heading("Steps", 2)
    steps = [s for s in wt.steps if s.op in ex.reference]
    shown = {s.op for s in steps}
    for inner, lines in ex.inner:
        if inner.op not in shown:
            inside(inner, lines)
    library = {}
    for lib in ex.library:
        library.setdefault(lib.op, []).append(lib)
    for n, step in enumerate(steps, 1):
        value = ex.reference[step.op]
        heading(f"{n}. {step.op} {_shape(value)}", 3)
        para(step.says)
        file, lineno, line = ex.expressions[step.op]
        block(f"{file}:{lineno}\n    {line}", "python")
        for inner, lines in ex.inner:
            if inner.op == step.op:
                inside(inner, lines)
        block(f"NumPy float64 {_shape(value)}\n{_array(value)}")
        libs = library.get(step.op, [])
        _side_by_side(ex, step, value, libs, table, para)
        rows = []
        for fw, dt in TWINS:
            twin = ex.twins[fw, dt].get(step.op)
            if twin is None:  # a fused kernel records no intermediate
                rows.append((f"{NAMES[fw]} {dt}", "-", "not traced"))
                continue
            rows.append((f"{NAMES[fw]} {dt}", f"{ex.difference(step.op, fw, dt):.1e}",
                         "ok" if within(twin, value, dt) else "OUT"))
        for lib in libs:
            verdict = ("named" if lib.differs else "ok" if within(lib.value, value, lib.dtype, lib.where)
                       else "OUT")
            rows.append((f"{_short(lib.call)} {lib.dtype}", f"{_max_abs(lib.value, value, lib.where):.1e}",
                         verdict))
        table(rows, ["against NumPy float64", "max abs difference", "tolerance"])
        for lib in libs:
            para(f"`{lib.call}`" + (f": named difference: {lib.differs}" if lib.differs else "."))
        if step.library:
            para(f"Library: {step.library}")
    para("Every number above is computed by `tmirror explain`; the tolerance column applies "
         f"`conformance.compare.tolerance.TOLERANCES` (float64 atol {tolerance.TOLERANCES['float64'].atol:g}, "
         f"float32 atol {tolerance.TOLERANCES['float32'].atol:g}).")
    while out and not out[-1]:
        out.pop()
    return "\n".join(out)


def _side_by_side(ex, step, value, libs, table, para):
    """One row of the op's last axis: NumPy, PyTorch and Keras float32, and the library, per element."""
    index = _row(value)
    columns = [("NumPy float64", value)]
    columns += [(f"{NAMES[fw]} float32", ex.twins[fw, "float32"][step.op]) for fw in ("torch", "tf")
                if step.op in ex.twins[fw, "float32"]]
    columns += [("library", lib.value) for lib in libs
                if lib.where is None and np.shape(lib.value) == value.shape][:1]
    if value.ndim == 0:
        return
    rows = []
    for j in range(value.shape[-1]):
        at = index + (j,)
        rows.append([str(j)] + [_number(np.asarray(v)[at]) for _, v in columns])
    para(f"Side by side, element by element, at {_index(index)}:")
    table(rows, ["j"] + [c for c, _ in columns])


def _row(value) -> tuple:
    """The leading index of the row to show: the first whose last axis is not all zero."""
    lead = value.reshape(-1, value.shape[-1]) if value.ndim else value.reshape(1, 1)
    nonzero = [i for i in range(lead.shape[0]) if np.any(lead[i] != 0)]
    flat = nonzero[0] if nonzero else 0
    return tuple(int(i) for i in np.unravel_index(flat, value.shape[:-1])) if value.ndim > 1 else ()


def _index(index) -> str:
    return "[" + ", ".join([str(i) for i in index] + [":"]) + "]"


SHORT = 51  # the widest library label in a Markdown table of 100 columns (with its dtype and the number columns)


def _short(call: str) -> str:
    """A call with its argument lists elided: `BertModel(...).attentions[0]`."""
    out, depth = "", 0
    for ch in call:
        if ch == "(":
            out += "(" if depth == 0 else ""
            depth += 1
        elif ch == ")":
            depth -= 1
            out += "...)" if depth == 0 else ""
        elif depth == 0:
            out += ch
    if len(call) <= 30:
        return call
    # a long class name (BartForConditionalGeneration) leaves no room in the table for "(...)", or for itself:
    # the call in full follows the table
    if len(out) > SHORT:
        out = out.replace(" (...)", "").replace("(...)", "")
    return out if len(out) <= SHORT else "..." + out[out.index("."):]


def _docstring(module, keyword: str) -> str:
    doc = inspect.getdoc(module) or ""
    if not keyword:
        return doc
    paragraphs = doc.split("\n\n")
    return "\n\n".join([paragraphs[0]] + [p for p in paragraphs[1:] if keyword in p])


def _number(x) -> str:
    return f"{float(x):.8g}"


def _shape(a) -> str:
    return str(tuple(np.shape(a)))


def _array(a) -> str:
    a = np.asarray(a)
    if a.dtype == bool:
        return np.array2string(a.astype(int), max_line_width=WIDTH - 8, threshold=400)
    return np.array2string(a, precision=4, max_line_width=WIDTH - 8, threshold=400)


def _fold(line, width):
    """A code line longer than `width`, cut before its end-of-line comment or at width."""
    if len(line) <= width:
        return [line]
    indent = " " * (len(line) - len(line.lstrip()) + 4)
    code, hash_, comment = line.partition("  # ")
    if hash_ and len(code.rstrip()) <= width:
        return [code.rstrip()] + _fold(indent + "# " + comment, width)
    return [line[:width]] + _fold(indent + line[width:].lstrip(), width)


def _wrap(text, width):
    import textwrap
    return textwrap.wrap(text, width, break_on_hyphens=False) or [""]


# -------------------------------------------------------------------------------- library calls

def _torch():
    import torch
    return torch


def _tensor(x, dtype="float64"):
    torch = _torch()
    x = np.asarray(x)
    return torch.from_numpy(np.ascontiguousarray(x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x))


def _keras():
    import keras
    return keras


def _np(x):
    return x.detach().numpy() if hasattr(x, "detach") else _keras().ops.convert_to_numpy(x)


def _within_prefix(w, prefix):
    return {k[len(prefix):]: v for k, v in w.items() if k.startswith(prefix)}


# -------------------------------------------------------------------------------- the walkthroughs

def _rng():
    return np.random.default_rng(0)


def _readable(shape, rng=None):
    return np.round((rng or _rng()).standard_normal(shape), 1)


def softmax_inputs(cfg):
    scores = np.array([[1.0, 2.0, 3.0],
                       [1000.0, 1001.0, 1002.0],   # huge logits: the same probabilities as [1, 2, 3]
                       [1.0, 2.0, 30.0],           # the 30 is masked: as if the row were [1, 2]
                       [5.0, 5.0, 5.0]])[None, None]  # every position masked       (1, 1, 4, 3)
    mask = np.ones_like(scores, bool)
    mask[0, 0, 2, 2] = False
    mask[0, 0, 3, :] = False
    return {"scores": scores, "mask": mask}


def softmax_library(cfg, w, inputs, records, calls):
    torch, keras = _torch(), _keras()
    scores, mask = inputs["scores"], inputs["mask"]
    filled = _tensor(scores).masked_fill(~_tensor(mask), cfg.mask_fill)
    with np.errstate(over="ignore", invalid="ignore"):  # what the max subtraction prevents
        naive = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    return [
        Library("output", "torch.softmax(scores.masked_fill(~mask, fill), -1)", _np(torch.softmax(filled, -1)),
                differs="a fully masked row comes out uniform (1/S each), not zeros: softmax sees a row "
                          "of equal fills; ours and Keras's zero it."),
        Library("output", "keras.layers.Softmax()(scores, mask=mask)",
                _np(keras.layers.Softmax(dtype="float64")(scores, mask=mask))),
        Library("output", "np.exp(x) / np.exp(x).sum(-1)", naive,
                differs="no max subtraction: exp(1000) overflows to inf and the huge-logit row is NaN."),
    ]


def softmax_inner(module, w, inputs, records):
    return [Inner(softmax, (inputs["scores"], inputs["mask"], module.fill), "output")]


def layer_norm_inputs(cfg):
    x = np.array([[1.0, 2.0, 3.0, 4.0],
                  [5.0, 5.0, 5.0, 5.01],      # nearly constant: variance 1.9e-5, where epsilon matters
                  [-2.0, 0.5, 0.0, 1.5]])[None]   # (1, 3, 4)
    return {"x": x}


def layer_norm_inner(module, w, inputs, records):
    return [Inner(layer_norm, (inputs["x"], w["gamma"].astype(np.float64), w["beta"].astype(np.float64),
                               module.eps), "output")]


def layer_norm_library(cfg, w, inputs, records, calls):

    x = inputs["x"]
    return [
        Library("output", f"torch.nn.LayerNorm({cfg.d_model}, eps={cfg.layer_norm_eps:g})",
                oracles.torch_layer_norm(cfg, w, x)),
        Library("output", f"keras.layers.LayerNormalization(epsilon={cfg.layer_norm_eps:g})",
                oracles.keras_layer_norm(cfg, w, x)),
        Library("output", "keras.layers.LayerNormalization()", oracles.keras_layer_norm(
            cfg.replace(layer_norm_eps=1e-3), w, x),
            differs="Keras's default epsilon is 1e-3, not BERT's 1e-12: the nearly constant row is "
                      "divided by sqrt(1.9e-5 + 1e-3) instead of sqrt(1.9e-5)."),
        Library("output", "torch.nn.LayerNorm(4)", oracles.torch_layer_norm(cfg.replace(layer_norm_eps=1e-5), w, x),
                differs="torch's default epsilon is 1e-5 (GPT-2's): visible on the nearly constant row."),
    ]


def linear_library(cfg, w, inputs, records, calls):
    torch, keras = _torch(), _keras()
    x, kernel, bias = inputs["x"], w["kernel"], w.get("bias")
    out = [Library("output", "torch.nn.functional.linear(x, kernel.T, bias)",
                   _np(torch.nn.functional.linear(_tensor(x), _tensor(kernel.T), None if bias is None
                                                  else _tensor(bias))))]
    dense = keras.layers.Dense(kernel.shape[1], use_bias=bias is not None, dtype="float64")
    dense.build(x.shape)
    dense.set_weights([kernel] + ([] if bias is None else [bias]))
    out.append(Library("output", "keras.layers.Dense(d_out)", _np(dense(x))))
    return out


def linear_inner(module, w, inputs, records):
    return [Inner(linear, (inputs["x"], w["kernel"].astype(np.float64),
                           None if "bias" not in w else w["bias"].astype(np.float64)), "output")]


FLOAT32_CONSTANT = ("in float64 only: tf.nn.gelu multiplies by cast(0.7071067811865476, float64), and "
                    "TensorFlow makes that Python float a float32 constant first, so results move by "
                    "about 5e-9 (the float64 trap of conformance.oracles.layers); float32 is unaffected.")


def activation_inputs(cfg):
    return {"x": np.linspace(-3, 3, 10).reshape(1, 2, 5)}


def activation_library(cfg, w, inputs, records, calls):
    torch, keras = _torch(), _keras()
    F, x = torch.nn.functional, inputs["x"]
    exact = cfg.activation == "gelu"
    if cfg.activation == "relu":
        return [Library("output", "torch.relu(x)", _np(torch.relu(_tensor(x)))),
                Library("output", "keras.activations.relu(x)", _np(keras.activations.relu(x)))]
    other = "tanh" if exact else "erf"
    return [
        Library("output", f"F.gelu(x, approximate='{'none' if exact else 'tanh'}')",
                _np(F.gelu(_tensor(x), approximate="none" if exact else "tanh"))),
        Library("output", f"keras.activations.gelu(x, approximate={not exact})",
                _np(keras.activations.gelu(keras.ops.convert_to_tensor(x), approximate=not exact)),
                differs=FLOAT32_CONSTANT),
        Library("output", "keras.ops.gelu(x)", _np(keras.ops.gelu(keras.ops.convert_to_tensor(x))),
                differs="" if not exact else "keras.ops.gelu defaults to approximate=True (tanh), while "
                          "keras.activations.gelu and torch default to the exact erf form."),
        Library("output", f"F.gelu(x, approximate='{'tanh' if exact else 'none'}')",
                _np(F.gelu(_tensor(x), approximate="tanh" if exact else "none")),
                differs=f"the {other} form, a different formula: apart by more than float32's tolerance."),
    ]


def activation_inner(module, w, inputs, records):
    return [Inner(module.fn, (inputs["x"],), "output")]


def dropout_inputs(cfg):
    x = _readable((1, 2, 4))
    keep = np.array([[[True, False, True, True], [True, True, False, True]]])
    return {"x": x, "keep": keep}


def dropout_library(cfg, w, inputs, records, calls):
    torch = _torch()
    x = inputs["x"]
    torch.manual_seed(0)
    y = _np(torch.nn.functional.dropout(_tensor(x), cfg.dropout, training=True))
    both = (y != 0) & inputs["keep"]
    # torch draws its own mask: compared only on the units both keep, where each is x / (1 - p)
    return [Library("output", f"F.dropout(x, p={cfg.dropout}, training=True), units both keep", y, where=both)]


def dropout_inner(module, w, inputs, records):
    return [Inner(dropout, (inputs["x"], inputs["keep"], module.rate), "output")]


def embedding_inputs(values):
    def make(cfg):
        return {"ids": np.array([values])}
    return make


def embedding_library(cfg, w, inputs, records, calls):
    torch, keras = _torch(), _keras()
    table, ids = w["table"], inputs["ids"]
    layer = keras.layers.Embedding(*table.shape, dtype="float64")
    layer.build(ids.shape)
    layer.set_weights([table])
    return [Library("output", "torch.nn.functional.embedding(ids, table)",
                    _np(torch.nn.functional.embedding(_tensor(ids), _tensor(table)))),
            Library("output", "keras.layers.Embedding(num, D)", _np(layer(ids)))]


def sinusoidal_inner(module, w, inputs, records):
    return [Inner(sinusoidal_encoding, (inputs["positions"], module.d_model), "output")]


def sinusoidal_library(cfg, w, inputs, records, calls):
    import keras_hub
    T = inputs["positions"].shape[1]
    layers = {dt: keras_hub.layers.SinePositionEncoding(dtype=dt) for dt in ("float32", "float64")}
    return [Library("output", "keras_hub.layers.SinePositionEncoding()",
                    _np(layers["float32"](np.zeros((1, T, cfg.d_model), np.float32))), dtype="float32"),
            Library("output", "keras_hub.layers.SinePositionEncoding()",
                    _np(layers["float64"](np.zeros((1, T, cfg.d_model)))),
                    differs="its ops.cast(1 / max_wavelength, float64) goes through a float32 constant "
                              "(TensorFlow's tf.cast of a Python float), so in float64 the frequencies are "
                              "off by 2.5e-9 relative; float32 is unaffected.")]


def sdpa_inputs(cfg):
    rng = _rng()
    q, k, v = (_readable((1, 1, 4, cfg.head_dim), rng) for _ in range(3))
    mask = np.ones((1, 1, 4, 4), bool)
    mask[..., 3] = False  # the 4th token is padding: no query may attend to it
    return {"q": q, "k": k, "v": v, "mask": mask}


def sdpa_inner(module, w, inputs, records):
    return [Inner(scaled_dot_product_attention, (inputs["q"], inputs["k"], inputs["v"], inputs.get("mask"), module.cfg,
                                                 trace.untraced), "context")]


def sdpa_library(cfg, w, inputs, records, calls):

    keras = _keras()
    q, k, v, mask = inputs["q"], inputs["k"], inputs["v"], inputs["mask"]
    swap = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731 - (B, H, T, Dh) <-> (B, T, H, Dh)
    context = keras.ops.dot_product_attention(swap(q), swap(k), swap(v), mask=mask, scale=np.float64(cfg.scale))
    return [Library("context", "F.scaled_dot_product_attention(q, k, v, attn_mask=mask)",
                    oracles.torch_sdpa(cfg, q, k, v, mask, "float64")),
            Library("context", "keras.ops.dot_product_attention(q, k, v, mask=mask)", swap(_np(context)))]


def feature_attention_inputs(cfg):
    rng = _rng()
    q, k, v = (_readable((1, 1, 4, cfg.head_dim), rng) for _ in range(3))
    return {"q": q, "k": k, "v": v, "mask": np.array([[True, True, True, False]])}  # the 4th key is padding


def feature_attention_inner(module, w, inputs, records):
    """The feature map of the queries line by line, then the attention from the two feature tensors."""
    features = (Inner(elu_feature_map, (inputs["q"],), "query_features") if module.cfg.kind == "linear_attention"
                else Inner(random_feature_map, (inputs["q"], module.random_features, module.cfg.scale, -1),
                           "query_features"))
    return [features, Inner(linear_attention, (records["query_features"], records["key_features"], inputs["v"],
                                               trace.untraced), "context")]


def feature_attention_library(cfg, w, inputs, records, calls):
    """No library has these layers (transformers, keras-hub and the installed packages have no linear or
    Performer attention): torch computes the (T, S) form they avoid, on the reference's features, and
    softmax attention on the same q, k, v is shown beside it, the distance the docs measure."""
    torch = _torch()
    qf, kf, v = _tensor(records["query_features"]), _tensor(records["key_features"]), _tensor(inputs["v"])
    similarity = qf @ kf.transpose(-1, -2)  # masked keys' features are 0: so is their column
    mask = inputs["mask"][:, None, None, :].repeat(4, axis=2)
    quadratic = similarity @ v / similarity.sum(-1, keepdim=True)  # (B, H, T, Dh)
    return [Library("context", "torch: (phi(q) @ phi(k).T) @ v / row sums", _np(quadratic)),
            Library("context", "F.scaled_dot_product_attention(q, k, v, attn_mask=mask)",
                    oracles.torch_sdpa(cfg, inputs["q"], inputs["k"], inputs["v"], mask, "float64"),
                    differs="softmax attention, which linear attention replaces and Performer estimates "
                            "(docs/techniques/linear_attention.md measures the distance)")]


def tiled_inputs(cfg):
    """The SDPA example with the keys in two blocks of 2: the padded 4th key sits in the second."""
    inputs = sdpa_inputs(cfg)
    q = inputs["q"]
    inputs["k"][..., 2, :] = np.round(q[..., 0, :] + q[..., 1, :], 1)  # the second block of keys raises both
    #                                      first queries' max: their sums and outputs so far are rescaled
    return inputs


def tiled_inner(module, w, inputs, records):
    return [Inner(tiled_attention, (inputs["q"], inputs["k"], inputs["v"], inputs["mask"], module.cfg), "context")]


def tiled_library(cfg, w, inputs, records, calls):
    """The reference attention on the same q, k, v: the tiled loop's end result must be its value."""
    q, k, v, mask = inputs["q"], inputs["k"], inputs["v"], inputs["mask"]
    return [Library("context", "attention_impl='reference': softmax(q k^T / sqrt(Dh) + mask) v",
                    scaled_dot_product_attention(q, k, v, mask, cfg, trace.untraced))]


def mha_inputs(cfg):
    mask = np.ones((1, 4), bool)
    mask[0, 3] = False  # the 4th token is padding
    return {"x": _readable((1, 4, cfg.d_model)), "mask": mask}


def mha_inner(module, w, inputs, records, prefix=""):
    attention = dict(module.named_modules())[prefix.rstrip(".")]
    return [Inner(attention.split_heads, (records[f"{prefix}query.output"],), f"{prefix}q"),
            Inner(attention.merge_heads, (records[f"{prefix}context"],), f"{prefix}merged")]


def mha_library(cfg, w, inputs, records, calls):
    torch, keras = _torch(), _keras()

    x, mask = inputs["x"], inputs["mask"]
    attn = torch.nn.MultiheadAttention(cfg.d_model, cfg.num_heads, bias=cfg.use_bias, batch_first=True).double()
    oracles._load_torch_mha(attn.eval(), w, "", cfg)
    out, probs = attn(_tensor(x), _tensor(x), _tensor(x), key_padding_mask=~_tensor(mask),
                      need_weights=True, average_attn_weights=False)
    H, Dh, D = cfg.num_heads, cfg.head_dim, cfg.d_model
    layer = keras.layers.MultiHeadAttention(H, Dh, use_bias=cfg.use_bias, dtype="float64")
    layer._inverse_sqrt_key_dim = np.float64(cfg.scale)  # the float64 scale trap: see oracles
    layer.build(x.shape, x.shape)
    for dense, name in ((layer.query_dense, "query"), (layer.key_dense, "key"), (layer.value_dense, "value")):
        dense.kernel.assign(w[f"{name}.kernel"].reshape(D, H, Dh))
        dense.bias.assign(w[f"{name}.bias"].reshape(H, Dh))
    layer.output_dense.kernel.assign(w["output.kernel"].reshape(H, Dh, D))
    layer.output_dense.bias.assign(w["output.bias"])
    keras_out, keras_probs = layer(x, x, attention_mask=np.broadcast_to(mask[:, None, :], (1, 4, 4)),
                                   return_attention_scores=True)
    torch_call = "nn.MultiheadAttention(need_weights=True, average_attn_weights=False)"
    keras_call = "keras.layers.MultiHeadAttention(return_attention_scores=True)"
    return [Library("probs", torch_call, _np(probs)), Library("output.output", torch_call, _np(out)),
            Library("probs", keras_call, _np(keras_probs)), Library("output.output", keras_call, _np(keras_out))]


def ffn_library(cfg, w, inputs, records, calls):
    torch, keras = _torch(), _keras()
    x = inputs["x"]
    inner = torch.nn.Linear(cfg.d_model, cfg.d_ff).double()
    outer = torch.nn.Linear(cfg.d_ff, cfg.d_model).double()

    oracles._load_torch_linear(inner, w, "inner")
    oracles._load_torch_linear(outer, w, "outer")
    gelu = torch.nn.GELU(approximate="tanh" if cfg.activation == "gelu_tanh" else "none")
    act = gelu if cfg.activation != "relu" else torch.nn.ReLU()
    with torch.no_grad():
        h = inner(_tensor(x))
        a = act(h)
        y = outer(a)
    dense = keras.layers.Dense(cfg.d_ff, activation=cfg.activation if cfg.activation != "gelu_tanh" else None,
                               dtype="float64")
    dense.build(x.shape)
    dense.set_weights([w["inner.kernel"], w["inner.bias"]])
    out = [Library("inner.output", "torch.nn.Linear(D, F)", _np(h)),
           Library("activation.output", f"torch.nn.{type(act).__name__}()", _np(a)),
           Library("outer.output", "torch.nn.Linear(F, D)", _np(y))]
    if cfg.activation != "gelu_tanh":
        out.append(Library("activation.output", f"keras.layers.Dense(F, activation='{cfg.activation}')",
                           _np(dense(x)), differs=FLOAT32_CONSTANT if cfg.activation == "gelu" else ""))
    return out


def encoder_inputs(cfg):
    return mha_inputs(cfg)


def encoder_library(cfg, w, inputs, records, calls):

    return [Library("output", "nn.TransformerEncoderLayer(norm_first=False)",
                    oracles.torch_encoder_layer(cfg, w, inputs["x"], inputs["mask"]))]


def decoder_inputs(cfg):
    mask = np.ones((1, 3), bool)
    memory_mask = np.ones((1, 4), bool)
    memory_mask[0, 3] = False
    rng = _rng()
    return {"x": _readable((1, 3, cfg.d_model), rng), "memory": _readable((1, 4, cfg.d_model), rng),
            "mask": mask, "memory_mask": memory_mask}


def decoder_library(cfg, w, inputs, records, calls):

    return [Library("output", "nn.TransformerDecoderLayer(norm_first=False)",
                    oracles.torch_decoder_layer(cfg, w, inputs["x"], inputs["memory"], inputs["mask"],
                                                inputs["memory_mask"]))]


def rms_norm_inner(module, w, inputs, records):
    return [Inner(rms_norm, (inputs["x"], w["gamma"].astype(np.float64), module.eps, module.offset, module.upcast),
                  "output")]


def rms_norm_library(cfg, w, inputs, records, calls):
    x = inputs["x"]
    layer = {"gamma": w["gamma"], "beta": np.zeros_like(w["gamma"])}
    return [
        Library("output", f"torch.nn.RMSNorm({cfg.d_model}, eps={cfg.layer_norm_eps:g})",
                oracles.torch_rms_norm(cfg, w, x)),
        Library("output", f"keras.layers.RMSNormalization(epsilon={cfg.layer_norm_eps:g})",
                oracles.keras_rms_norm(cfg, w, x)),
        Library("output", "transformers LlamaRMSNorm", oracles.transformers_rms_norm(cfg, w, x, "float64"),
                dtype="float32"),
        Library("output", "transformers T5LayerNorm (T5's norm)", oracles.transformers_t5_layer_norm(cfg, w, x),
                dtype="float32"),
        Library("output", f"torch.nn.LayerNorm({cfg.d_model}) (same gamma, beta 0)",
                oracles.torch_layer_norm(cfg, layer, x),
                differs="layer norm subtracts each row's mean first: the same numbers on the zero-mean third "
                          "row, and on the nearly constant second row it magnifies a 0.01 wobble to +-1.7 "
                          "where RMSNorm returns about 1 everywhere."),
    ]


def rotary_inputs(cfg):
    """Head 0 holds the same vector at every position: pair 0 (features 0 and 2) = (1, 0), pair 1
    (features 1 and 3) = (0, 1), so the rotation is the angle itself; head 1 is random."""
    rng = _rng()
    q = _readable((1, cfg.num_heads, 4, cfg.head_dim), rng)
    q[0, 0] = [1.0, 0.0, 0.0, 1.0]
    k = _readable((1, cfg.kv_heads, 4, cfg.head_dim), rng)
    return {"q": q, "k": k, "position_ids": np.arange(4)[None]}


def rotary_inner(module, w, inputs, records):
    return [Inner(apply_rotary, (inputs["q"], records["cos"], records["sin"], module.cfg), "q")]


def rotary_library(cfg, w, inputs, records, calls):
    import keras_hub
    q, k, positions = inputs["q"], inputs["k"], inputs["position_ids"]
    hf = oracles.transformers_rotary(cfg, q, k, positions, "float64")
    swap = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731 - (B, H, T, Dh) <-> (B, T, H, Dh)
    layer = keras_hub.layers.RotaryEmbedding(max_wavelength=cfg.rope_theta, dtype="float64")
    call = "apply_rotary_pos_emb(q, k, *LlamaRotaryEmbedding(config)(q, position_ids))"
    return [Library("q", call, hf["q"], dtype="float32"), Library("k", call, hf["k"], dtype="float32"),
            Library("q", "keras_hub.layers.RotaryEmbedding()(q)", swap(_np(layer(swap(q)))), dtype="float32")]


def gated_library(cfg, w, inputs, records, calls):
    torch, keras = _torch(), _keras()
    x = inputs["x"]
    dense = keras.layers.Dense(cfg.d_ff, activation="silu", use_bias=cfg.mlp_bias, dtype="float64")
    dense.build(x.shape)
    dense.set_weights([w["gate.kernel"]] + ([w["gate.bias"]] if cfg.mlp_bias else []))
    gate = _tensor(records["gate.output"])
    return [Library("activation.output", "torch.nn.functional.silu(x @ W_gate)", _np(torch.nn.functional.silu(gate))),
            Library("activation.output", "keras.layers.Dense(F, activation='silu')", _np(dense(x))),
            Library("output", "transformers LlamaMLP(hidden_act='silu')",
                    oracles.transformers_gated_feed_forward(cfg, w, x))]


def moe_inputs(cfg):
    x = _readable((1, 3, cfg.d_model))
    return {"x": np.concatenate([x, x[:, :1]], axis=1)}                     # (1, 4, D): token 3 repeats token 0


def moe_library(cfg, w, inputs, records, calls):
    torch = _torch()
    probs, k = _tensor(records["probs"]), cfg.experts_per_token
    top, index = torch.topk(probs, k, dim=-1)
    return [Library("probs", "torch.softmax(x @ W_router, -1)", _np(torch.softmax(_tensor(records["router.output"]), -1))),
            Library("routing", "torch.topk(probs, k) renormalized, scattered to (N, E)",
                    _np(torch.zeros_like(probs).scatter(-1, index, top / top.sum(-1, keepdim=True)))),
            Library("output", "transformers MixtralSparseMoeBlock (router softmax in float32)",
                    oracles.transformers_sparse_moe(cfg, w, inputs["x"]), dtype="float32")]


def patch_inputs(cfg):
    """A 2-channel 4 x 4 image whose values say where they are: channel 0 counts 0..15 row by row, channel 1
    is 100 more."""
    counts = np.arange(16.0).reshape(4, 4)
    return {"pixel_values": np.stack([counts, 100 + counts])[None]}          # (1, C, H, W)


def patch_inner(module, w, inputs, records):
    return [Inner(patchify, (inputs["pixel_values"].transpose(0, 2, 3, 1), module.patch_size), "patches")]


def patch_library(cfg, w, inputs, records, calls):
    torch, keras = _torch(), _keras()
    x, P, D = inputs["pixel_values"], cfg.patch_size, cfg.d_model
    weight = TORCH_CONV[0].to_external(w["kernel"])                            # (D, C, P, P)
    conv = torch.nn.functional.conv2d(_tensor(x), _tensor(weight), _tensor(w["bias"]), stride=P)
    layer = keras.layers.Conv2D(D, P, strides=P, dtype="float64")
    images = x.transpose(0, 2, 3, 1)                                           # (B, H, W, C)
    layer.build(images.shape)
    layer.set_weights([w["kernel"], w["bias"]])
    return [Library("output", "F.conv2d(pixel_values, weight (D, C, P, P), bias, stride=P).flatten(2).mT",
                    _np(conv.flatten(2).transpose(1, 2))),
            Library("output", "keras.layers.Conv2D(D, P, strides=P) on the image channels last",
                    _np(layer(images)).reshape(records["output"].shape))]
# Offsets from -130 to 130 against one query at 130: the exact buckets near 0, the logarithmic ones, the last
RELATIVE = (-130, -64, -20, -9, -8, -7, -1, 0, 1, 7, 8, 9, 20, 64, 130)


def relative_inputs(cfg):
    return {"query_positions": np.array([130]), "key_positions": 130 + np.array(RELATIVE)}


def relative_inner(module, w, inputs, records):
    relative = inputs["key_positions"][None, :] - inputs["query_positions"][:, None]
    return [Inner(relative_position_bucket, (relative, module.bidirectional, module.num_buckets, module.max_distance),
                  "buckets")]


def relative_library(cfg, w, inputs, records, calls):
    relative = inputs["key_positions"][None, :] - inputs["query_positions"][:, None]
    bidirectional = not cfg.causal
    return [Library("buckets", "T5Attention._relative_position_bucket",
                    oracles.transformers_relative_buckets(cfg, relative, bidirectional)),
            Library("buckets", "T5MultiHeadAttention._relative_position_bucket",
                    oracles.keras_hub_relative_buckets(cfg, relative, bidirectional)),
            Library("output", "T5Attention relative_attention_bias(buckets).permute(2, 0, 1)",
                    oracles.transformers_relative_bias(cfg, w, records["buckets"]))]


LAYER = dict(d_model=8, num_heads=2, d_ff=16)
LAYER_SHOWS = ("num_heads", "head_dim", "d_ff", "activation", "layer_norm_eps", "norm_first")

MHA_STEPS = (
    Step("query.output", "Project every token to its query: x @ W_q + b_q, still one D-wide vector a token.",
         "torch's nn.MultiheadAttention keeps W_q, W_k, W_v packed in one in_proj_weight [3D, D] ([out, in]); "
         "Keras keeps each per head, kernel (D, H, Dh)."),
    Step("q", "Split the D channels into H heads of Dh: reshape (B, T, D) -> (B, T, H, Dh), then "
              "transpose to (B, H, T, Dh) so each head is its own (T, Dh) matrix."),
    Step("k", "The same projection and split for the keys (from the context in cross-attention)."),
    Step("v", "And for the values."),
    Step("scores", "Every query against every key, per head: q k^T / sqrt(Dh). Shape (B, H, T, S)."),
    Step("probs", "Softmax over the keys; the padded key gets mask_fill first, so its column is 0.",
         "nn.MultiheadAttention returns these per head with average_attn_weights=False (averaged over heads "
         "by default); Keras returns them with return_attention_scores=True."),
    Step("context", "Each head's probability-weighted sum of its values: probs @ v, (B, H, T, Dh)."),
    Step("merged", "Undo the split: transpose back to (B, T, H, Dh) and reshape to (B, T, D)."),
    Step("output.output", "The output projection mixes the heads: merged @ W_o + b_o."),
)


def _prefixed(prefix, steps):
    return tuple(Step(prefix + s.op, s.says, s.library) for s in steps)


def disentangled_inputs(cfg):
    mask = np.ones((1, 6), bool)
    mask[0, 5] = False  # the 6th token is padding
    return {"x": _readable((1, 6, cfg.d_model)), "rel": _readable((2 * cfg.relative_span, cfg.d_model)), "mask": mask}


def disentangled_library(cfg, w, inputs, records, calls):
    merged, probs = oracles.transformers_disentangled_attention(cfg, w, inputs["x"], inputs["rel"], inputs["mask"])
    call = "transformers' DisentangledSelfAttention(output_attentions=True)"
    why = " (float32 tolerance: it divides by a float32 sqrt(3 Dh))"
    real = inputs["mask"][:, None, :, None] & np.ones_like(probs, bool)  # its padded query rows are uniform
    return [Library("merged", call + why, merged, where=np.broadcast_to(inputs["mask"][..., None], merged.shape),
                    dtype="float32"),
            Library("probs", call + why, probs, where=real, dtype="float32")]


WALKTHROUGHS: dict[str, Walkthrough] = {w.name: w for w in [
    Walkthrough("linear", "A dense layer on two tokens of width 4 mapped to width 3, kernel [in, out].",
                dict(d_model=4, d_ff=3), lambda cfg: {"x": _readable((1, 2, 4))},
                (Step("output", "y = x @ kernel + bias: each output channel a weighted sum of the inputs.",
                      "torch.nn.Linear stores weight [out, in] and computes x @ W.T; Keras Dense stores "
                      "kernel [in, out] as we do."),),
                inner=linear_inner, library=linear_library,
                shows=("d_ff", "use_bias")),
    Walkthrough("softmax", "Softmax on [1, 2, 3], on [1000, 1001, 1002] (huge logits), on [1, 2, 30] with "
                           "the 30 masked, and on a row with every position masked.",
                dict(d_model=4, num_heads=1), softmax_inputs,
                (Step("output", "Masked positions get mask_fill, then exp(x - max) / sum: the huge-logit row "
                                "gives exactly the [1, 2, 3] row, the masked row that of [1, 2], the "
                                "fully masked row zeros.",
                      "torch.softmax has no mask argument: callers fill first, and a fully masked row then "
                      "comes out uniform (fill -1e9) or NaN (fill -inf). transformers fills with the "
                      "dtype's minimum."),),
                inner=softmax_inner, library=softmax_library, math="softmax",
                shows=("mask_fill",)),
    Walkthrough("activation", "GELU on ten points from -3 to 3: the exact erf form, and the tanh form "
                              "beside it.",
                dict(d_model=5, num_heads=1), activation_inputs,
                (Step("output", "GELU(x) = x Phi(x): about x for large x, about 0 for very negative x, "
                                "slightly negative near x = -0.75.",
                      "BERT (and torch's default) use erf; GPT-2 and keras-hub's BertBackbone use tanh."),),
                inner=activation_inner, library=activation_library, math="GELU",
                shows=("activation",)),
    Walkthrough("dropout", "Dropout at rate 0.25 in training, with a supplied keep mask so every "
                           "framework drops the same units.",
                dict(d_model=4), dropout_inputs,
                (Step("output", "Dropped units become 0; kept ones are divided by 1 - rate = 0.75, so the "
                                "expected value is unchanged.",
                      "torch.nn.Dropout and keras.layers.Dropout draw their own masks from their own RNGs; "
                      "only the scale is comparable."),),
                inner=dropout_inner, library=dropout_library, math="Dropout",
                shows=("dropout",)),
    Walkthrough("layer_norm", "Layer norm on three vectors of width 4, one nearly constant, where the "
                              "epsilon shows.",
                dict(d_model=4), layer_norm_inputs,
                (Step("output", "Each row: subtract its mean, divide by sqrt(variance + eps), then scale by "
                                "gamma and shift by beta.",
                      "Defaults differ: torch.nn.LayerNorm eps 1e-5, keras LayerNormalization 1e-3, BERT "
                      "1e-12; the config names the value, so both are built with it."),),
                inner=layer_norm_inner, library=layer_norm_library,
                shows=("layer_norm_eps",)),
    Walkthrough("token_embedding", "Token ids [3, 0, 7, 3] looked up in an 11-row table of width 4.",
                dict(d_model=4, vocab_size=11), embedding_inputs([3, 0, 7, 3]),
                (Step("output", "Row i of the table for id i: a gather, no arithmetic. The repeated id 3 "
                                "gives the same row twice.",
                      "An id outside the table raises here, as in torch (IndexError); tf.gather on a GPU "
                      "returns zeros silently."),),
                library=embedding_library,
                shows=("vocab_size",)),
    Walkthrough("position_embedding", "Positions 0..3 looked up in a learned table of 8 positions.",
                dict(d_model=4, max_positions=8), embedding_inputs([0, 1, 2, 3]),
                (Step("output", "Row p of the position table for position p; added to the token rows by "
                                "the model.", "BERT and GPT-2 slice positions 0..T-1 of this table."),),
                library=embedding_library,
                shows=("max_positions",)),
    Walkthrough("segment_embedding", "Segment ids [0, 0, 1, 1]: sentence A, then sentence B.",
                dict(d_model=4, type_vocab_size=2), embedding_inputs([0, 0, 1, 1]),
                (Step("output", "One of two rows per token: which sentence it belongs to.",
                      "transformers calls this token_type_embeddings."),),
                library=embedding_library,
                shows=("type_vocab_size",)),
    Walkthrough("sinusoidal_position", "The fixed encoding of positions 0..5 at width 8: four frequencies, "
                                       "sine and cosine interleaved.",
                dict(d_model=8), lambda cfg: {"positions": np.arange(6)[None]},
                (Step("output", "Channel pair i turns at frequency 1 / 10000^(2i/D): the first pair once a "
                                "position, the last slower than once in 100.",
                      "keras_hub's SinePositionEncoding interleaves sine and cosine as ours does; torch "
                      "has no built-in."),),
                inner=sinusoidal_inner, library=sinusoidal_library,
                shows=()),
    Walkthrough("scaled_dot_product_attention", "Single-head attention on 4 tokens of width 4; the 4th "
                                                "token is padding.",
                dict(d_model=4, num_heads=1), sdpa_inputs,
                (Step("scores", "Every query against every key: q k^T, then times 1/sqrt(Dh) = 0.5."),
                 Step("probs", "Softmax over the keys; the padded key gets mask_fill, so column 3 is 0.",
                      "F.scaled_dot_product_attention and keras.ops.dot_product_attention do not return "
                      "these; their boolean masks are True = attend, as ours (nn.MultiheadAttention's "
                      "are True = blocked)."),
                 Step("context", "Each query's probability-weighted average of the value rows: probs @ v.")),
                inner=sdpa_inner, library=sdpa_library,
                shows=("num_heads", "head_dim", "mask_fill", "causal")),
    Walkthrough("multi_head_attention", "4-head self-attention, D = 8 (Dh = 2), on 4 tokens; the 4th token "
                                        "is padding.",
                dict(d_model=8, num_heads=4), mha_inputs, MHA_STEPS,
                inner=mha_inner, library=mha_library,
                shows=("num_heads", "head_dim", "mask_fill", "causal", "use_bias")),
    Walkthrough("feed_forward", "The position-wise MLP D = 8 -> F = 16 -> D on 4 tokens.",
                LAYER, lambda cfg: {"x": _readable((1, 4, cfg.d_model))},
                (Step("inner.output", "Widen each token: x @ W_inner + b_inner, (B, T, F)."),
                 Step("activation.output", "GELU, elementwise.",
                      "keras.layers.Dense(activation='gelu') is the exact form; keras.ops.gelu defaults "
                      "to tanh."),
                 Step("outer.output", "Back to width D: h @ W_outer + b_outer."),
                 Step("output", "The block's output (dropout is the identity at inference).")),
                library=ffn_library,
                shows=("d_ff", "activation")),
    Walkthrough("encoder_layer", "One post-norm encoder layer (BERT's), D = 8, 2 heads, F = 16, on 4 "
                                 "tokens; the 4th is padding.",
                LAYER, encoder_inputs,
                _prefixed("attention.", (MHA_STEPS[1], MHA_STEPS[5], MHA_STEPS[8]))
                + (Step("attention_norm.output", "Residual, then layer norm: LN(x + Attention(x))."),
                   Step("feed_forward.activation.output", "The feed-forward's widened, activated middle."),
                   Step("feed_forward.output", "The feed-forward's output, width D again."),
                   Step("feed_forward_norm.output", "Residual, then layer norm: LN(x + FFN(x))."),
                   Step("output", "The layer's output: same shape as its input.",
                        "nn.TransformerEncoderLayer computes the same with the same weights; in eval mode "
                        "with no grad it may take a fused fast path (not used here).")),
                inner=lambda m, w, i, r: mha_inner(m, w, i, r, "attention."), library=encoder_library,
                shows=LAYER_SHOWS + ("causal",)),
    Walkthrough("decoder_layer", "One post-norm decoder layer: causal self-attention on 3 target tokens, "
                                 "cross-attention to 4 encoder positions (the 4th padding), feed-forward.",
                dict(LAYER, activation="relu"), decoder_inputs,
                (Step("self_attention.scores", "Target against target; per head (B, H, T, T)."),
                 Step("self_attention.probs", "Causal: token i sees tokens 0..i, so the upper triangle is 0."),
                 Step("self_attention_norm.output", "LN(x + SelfAttention(x))."),
                 Step("cross_attention.q", "Queries from the decoder side, (B, H, T, Dh)."),
                 Step("cross_attention.k", "Keys from the encoder's memory, (B, H, S, Dh)."),
                 Step("cross_attention.probs", "Each target token over the 4 source positions; the padded "
                                               "one gets 0."),
                 Step("cross_attention_norm.output", "LN(x + CrossAttention(x, memory))."),
                 Step("feed_forward_norm.output", "LN(x + FFN(x))."),
                 Step("output", "The layer's output.",
                      "nn.TransformerDecoderLayer names these self_attn, multihead_attn and norm1..norm3.")),
                library=decoder_library,
                shows=LAYER_SHOWS),
    Walkthrough("rms_norm", "RMSNorm on layer norm's three vectors of width 4: the first as an RMS scale, the "
                            "nearly constant second left near 1, the zero-mean third exactly as layer norm.",
                dict(d_model=4), layer_norm_inputs,
                (Step("output", "Each row divided by its root mean square sqrt(mean(x^2) + eps), then scaled by "
                                "offset + gamma; no mean is subtracted and there is no beta.",
                      "torch.nn.RMSNorm and keras.layers.RMSNormalization have no offset (Gemma's 1 + gamma is "
                      "passed as their weight); transformers' LlamaRMSNorm computes in float32 whatever the "
                      "dtype, so it is held to the float32 row."),),
                inner=rms_norm_inner, library=rms_norm_library,
                shows=("layer_norm_eps", "rms_norm_offset", "rms_norm_upcast")),
    Walkthrough("rotary_embedding", "Rotary embedding of 2 heads of width 4 (two pairs) at positions 0..3; head 0 "
                                    "is the same vector at every position, so its rotation is the angle itself.",
                dict(d_model=8, num_heads=2), rotary_inputs,
                (Step("cos", "cos(m theta_i), laid out like the features: pair 0 (features 0 and 2) turns "
                             "theta_0 = 1 radian a position, pair 1 (features 1 and 3) theta_1 = 10000^(-1/2) = "
                             "0.01.",
                      "transformers builds the same (B, T, Dh) table, emb = cat(freqs, freqs), in float32."),
                 Step("sin", "sin(m theta_i), the same layout."),
                 Step("q", "Each pair turned by its angle: head 0's pair 0 goes (1, 0) -> (cos m, sin m) around "
                           "the unit circle; pair 1 (0, 1) -> (-sin 0.01 m, cos 0.01 m) barely moves. Lengths "
                           "are unchanged.",
                      "GPT-J and Meta's checkpoints pair features (2i, 2i + 1) instead (rotary_pairing "
                      "'interleaved'); keras_hub's RotaryEmbedding takes (B, T, H, Dh)."),
                 Step("k", "The keys turn the same way, so a score q_m . k_n depends on m - n only.")),
                inner=rotary_inner, library=rotary_library,
                shows=("num_heads", "head_dim", "rope_theta", "rotary_pairing", "rope_scaling")),
    Walkthrough("disentangled_attention", "DeBERTa's attention, D = 8 in 2 heads, on 6 tokens, the 6th padding: "
                                          "distances past 2 share log buckets (4 buckets up to distance 8), so "
                                          "3, 4 and 5 read the same relative row.",
                dict(d_model=8, num_heads=2, position_buckets=4, max_relative_positions=8), disentangled_inputs,
                (Step("q", "Content queries, split into heads: (B, H, T, Dh) = (1, 2, 6, 4)."),
                 Step("position_key", "The relative table's 8 rows (distances -4..3) through the layer's own key "
                                      "projection, per head: pk = R W_k + b_k (v3 shares the projections)."),
                 Step("c2p", "Content-to-position: c2p[i, j] = q_i . pk[d(i, j)], d(i, j) the bucket of i - j "
                             "moved to 0..7; along a diagonal i - j is constant, so is the row read.",
                      "transformers gathers the same (B H, T, 2k) product with torch.gather."),
                 Step("position_query", "The same rows through the query projection: pq = R W_q + b_q."),
                 Step("p2c", "Position-to-content: p2c[i, j] = k_j . pq[d(i, j)], what key j offers a query at "
                             "that distance (transformers gathers at -bucket(j - i), the same row)."),
                 Step("scores", "The three terms summed, then divided by sqrt(3 Dh) = sqrt(12): three unit-variance "
                                "terms, variance 3."),
                 Step("probs", "Softmax over the keys; the padded key (column 5) and the padded query (row 5) are "
                               "both masked, so row 5 is all zeros.",
                      "transformers masks the same pairs but its padded query row comes out uniform, 1/6."),
                 Step("merged", "Each query's weighted values, the heads concatenated back to D = 8.")),
                library=disentangled_library,
                shows=("num_heads", "head_dim", "relative_attention", "position_buckets", "max_relative_positions",
                       "relative_span")),
    Walkthrough("gated_feed_forward", "The SwiGLU feed-forward D = 8 -> F = 16 -> D on 4 tokens: a SiLU gate "
                                      "times a linear up projection.",
                LAYER, lambda cfg: {"x": _readable((1, 4, cfg.d_model))},
                (Step("gate.output", "The gate's pre-activation: x @ W_gate, (B, T, F)."),
                 Step("activation.output", "SiLU(x) = x sigmoid(x), elementwise: about x when large, about 0 when "
                                           "very negative."),
                 Step("up.output", "The second projection, x @ W_up, linear: what the gate lets through."),
                 Step("gated", "The product, feature by feature: act(gate) * up, (B, T, F).",
                      "transformers' LlamaMLP writes the same line: down_proj(act_fn(gate_proj(x)) * up_proj(x))."),
                 Step("down.output", "Back to width D: h @ W_down."),
                 Step("output", "The block's output (dropout is the identity at inference).")),
                library=gated_library,
                shows=("d_ff", "activation", "mlp_bias")),
    Walkthrough("sparse_moe", "Top-k routing: a mixture of 4 SwiGLU experts (D = 8 -> F = 16 -> D), 2 a token, "
                              "on 4 tokens; the 4th token repeats the 1st, so it is routed the same way.",
                dict(LAYER, feed_forward="moe", activation="silu", num_experts=4, experts_per_token=2),
                moe_inputs,
                (Step("router.output", "One logit per expert and token: x @ W_router, no bias, (N, E)."),
                 Step("probs", "softmax over the experts, each row; the k = 2 largest of a row are its experts.",
                      "torch.topk breaks exact ties in no promised order, tf.math.top_k and NumPy's stable sort "
                      "by the lower index: near-ties are compared apart (conformance.compare.routing)."),
                 Step("routing", "The two chosen probabilities divided by their sum, zeros elsewhere: each row sums "
                                 "to 1, the softmax of the two chosen logits alone.",
                      "transformers' MixtralTopKRouter: topk of the float32 softmax, then top /= top.sum()."),
                 Step("experts.0.gated", "Expert 0's SwiGLU middle, only for the tokens that chose it (rows of x "
                                         "gathered): an expert no token chose runs on zero rows."),
                 Step("output", "sum over the chosen experts of weight x expert(x), scattered back to each token: "
                                "2 of the 4 experts' FLOPs a token, all 4 experts' parameters.")),
                library=moe_library, shows=("num_experts", "experts_per_token", "d_ff", "activation")),
    Walkthrough("patch_embedding", "A 2-channel 4 x 4 image cut into four 2 x 2 patches, each projected to width 3; "
                                   "channel 0 counts 0..15 row by row, channel 1 is 100 more, so every value says "
                                   "where it came from.",
                dict(d_model=3, num_heads=1, image_size=4, patch_size=2, num_channels=2), patch_inputs,
                (Step("patches", "Patch 0 is the top-left 2 x 2 block, pixels 0, 1 (first row) and 4, 5 (second "
                                 "row), each pixel's two channels together: 0 100 1 101 4 104 5 105. Patch 1 is the "
                                 "top-right block (2, 3, 6, 7), then the bottom row: the grid read row by row.",
                      "torch's Conv2d and transformers' ViTPatchEmbeddings never form the patches: their "
                      "convolution kernel (D, C, P, P) slides with stride P, touching each pixel once."),
                 Step("output", "Each flattened patch times the (P P C, D) = (8, 3) kernel, plus the bias: "
                                "one token of width D a patch.",
                      "keras.layers.Conv2D stores the kernel (P, P, C, D), ours; torch's Conv2d (D, C, P, P), "
                      "which the checkpoint tables transpose (leaf layout conv_out_in).")),
                inner=patch_inner, library=patch_library,
                shows=("image_size", "patch_size", "num_channels")),
    Walkthrough("relative_position_bias", "T5's relative position bias with its published 32 buckets reaching 128, "
                                          "2 heads: one query at position 130, keys from 0 to 260, so the offsets "
                                          "run from -130 to 130.",
                dict(d_model=8, num_heads=2, relative_buckets=32, relative_max_distance=128), relative_inputs,
                (Step("buckets", "The bucket of each offset (key - query), left to right -130, -64, -20, -9, -8, -7, "
                                 "-1, 0, 1, 7, 8, 9, 20, 64, 130. Bidirectional: 16 buckets a direction, keys after "
                                 "the query in 16..31; offsets 0..7 exact, 8..127 share 8 logarithmic buckets "
                                 "(-8 and -9 share 8, -20 is 10), every offset from 128 on the last (15, 31).",
                      "transformers computes the same in T5Attention._relative_position_bucket, keras-hub in "
                      "T5MultiHeadAttention, both with the logarithm in float32: a boundary falls where float32 "
                      "puts it."),
                 Step("output", "Each head's learned scalar for each bucket, (1, H, T, S): added to every "
                                "self-attention layer's scores of the stack, computed once.",
                      "transformers keeps this table in the first layer's attention (relative_attention_bias), "
                      "which passes the bias up the stack.")),
                inner=relative_inner, library=relative_library, math="bucket",
                shows=("num_heads", "relative_buckets", "relative_max_distance", "causal")),
    Walkthrough("linear_attention", "Linear attention (phi = elu + 1) on 4 tokens of width 4; the 4th key is "
                                    "padding.",
                dict(d_model=4, num_heads=1), feature_attention_inputs, (
                    Step("query_features", "phi(q) = elu(q) + 1: q + 1 above 0, exp(q) below, so every feature is "
                                           "positive."),
                    Step("key_features", "phi(k), the padded key's row zeroed: it adds nothing below."),
                    Step("kv", "phi(K)^T V, (Dh, Dh): the keys summed once, whatever the number of queries."),
                    Step("normalizer", "z = sum_j phi(k_j), the denominators' share of the keys."),
                    Step("numerator", "phi(q_i) kv for each query."),
                    Step("denominator", "phi(q_i) . z: the sum of query i's (never formed) similarities."),
                    Step("context", "numerator / denominator: a weighted average of the value rows, the weights "
                                    "phi(q_i) . phi(k_j) / phi(q_i) . z.", "The (T, S) form computed by torch "
                                    "gives the same; softmax attention does not.")),
                inner=feature_attention_inner, library=feature_attention_library,
                shows=("num_heads", "head_dim", "causal")),
    Walkthrough("performer_attention", "Performer (FAVOR+) with M = 6 random features on 4 tokens of width 4; "
                                       "the 4th key is padding.",
                dict(d_model=4, num_heads=1, performer_features=6), feature_attention_inputs, (
                    Step("query_features", "exp(x W - |x|^2 / 2 - max) / sqrt(M), x = q Dh^-1/4: each query's "
                                           "largest feature is 1 / sqrt(M) after its max is taken off."),
                    Step("key_features", "The same for the keys, one max for all of them (a common factor, as "
                                         "each query's is); the padded key's row zeroed."),
                    Step("kv", "phi(K)^T V, (M, Dh)."),
                    Step("normalizer", "z = sum_j phi(k_j)."),
                    Step("numerator", "phi(q_i) kv."),
                    Step("denominator", "phi(q_i) . z, an estimate of sum_j exp(q_i . k_j / sqrt(Dh)) times the "
                                        "two maxima's factors, which the division cancels."),
                    Step("context", "numerator / denominator: softmax attention estimated from M features.",
                         "With M = 6 the estimate is rough: compare the softmax row of the table.")),
                inner=feature_attention_inner, library=feature_attention_library,
                shows=("num_heads", "head_dim", "performer_features", "causal")),
]}


# -------------------------------------------------------------------------------- the models' walkthroughs

def _model_library(family, wt):
    """A `library` for a family's walkthrough `wt`: its `transformers` class at `transformers_steps`, and
    each torch layer of `conformance.oracles.layers` named in `layer_oracles` on that layer's own inputs."""

    def library(cfg, w, inputs, records, calls):
        out = []
        cls = family.transformers_class(cfg)
        if wt.transformers_steps and cls:
            torch = _torch()
            with torch.no_grad():
                got = transformers_model(cfg, w)(**{k: _tensor(v) for k, v in inputs.items()},
                                                        output_attentions=True, output_hidden_states=True)
            call = f"{cls}(output_attentions=True, output_hidden_states=True)"
            why = f" ({wt.transformers_dtype} tolerance: {wt.transformers_why})" if wt.transformers_why else ""
            out += [Library(op, f"{call}.{field}" + ("" if i is None else f"[{i}]") + why,
                            _np(getattr(got, field) if i is None else getattr(got, field)[i]),
                            dtype=wt.transformers_dtype)
                    for op, (field, i) in wt.transformers_steps.items()]
        for path, name in wt.layer_oracles.items():
            fn = getattr(oracles, name)
            args, kwargs, _ = calls[path]
            wanted = inspect.signature(fn).parameters
            value = fn(cfg, _within_prefix(w, f"{path}."), *args, **{k: v for k, v in kwargs.items() if k in wanted})
            out.append(Library(f"{path}.output", f"{name} on {path}'s own inputs", value))
        return out
    return library


def _model_walkthrough(family, wt=None) -> Walkthrough:
    wt = wt or family.walkthrough
    return Walkthrough(family.name, wt.summary, wt.config, lambda cfg: {k: np.array(v) for k, v in wt.inputs.items()},
                       wt.steps, library=_model_library(family, wt), capture=wt.capture, shows=wt.shows)


def walkthroughs() -> dict[str, Walkthrough]:
    """Every walkthrough: the components' (`WALKTHROUGHS`) and each family's, in registry order."""
    every = {**WALKTHROUGHS, **{f.name: _model_walkthrough(f) for f in families.FAMILIES.values() if f.walkthrough}}
    return {name: every[name] for name in registry.ENTRIES if name in every}


TILED_WALKTHROUGH = Walkthrough(
    "scaled_dot_product_attention", "Tiled (flash) attention on the SDPA example, in blocks of 2 queries x 2 keys: "
                                    "the running max m, sum l and unnormalized output acc after each block of "
                                    "keys, rescaled by exp(m - m') when a block raises the max.",
    dict(d_model=4, num_heads=1, attention_block_q=2, attention_block_k=2), tiled_inputs,
    (Step("context", "acc / l after the last block of keys: the reference attention's value, to float64 rounding. "
                     "No (T, S) scores or probabilities exist: each block's are made and dropped inside the loop."),),
    inner=tiled_inner, library=tiled_library, math="tiled",
    shows=("num_heads", "head_dim", "mask_fill", "attention_block_q", "attention_block_k"))
COMPONENT_VARIANTS = {("scaled_dot_product_attention", "tiled"): TILED_WALKTHROUGH}  # a component variant's own


def variant_walkthroughs() -> dict[tuple, Walkthrough]:
    """(entry, variant) -> the walkthrough a family declares for that variant (`Family.variant_walkthroughs`:
    RoBERTa's positions under padding, ALBERT's shared layer), and a component's (`COMPONENT_VARIANTS`:
    tiled attention), in registry order."""
    return {**COMPONENT_VARIANTS, **{(f.name, v): _model_walkthrough(f, wt) for f in families.FAMILIES.values()
                                     for v, wt in f.variant_walkthroughs.items()}}


# -------------------------------------------------------------------------------- techniques

LORA_STEPS = (  # (trace name, what it is)
    ("inner.lora_a.output", "x A: the input projected down to r numbers a position"),
    ("inner.lora_b.output", "(x A) B: back up to the projection's width, the low-rank update"),
    ("inner.output", "x W + b + s (x A) B: the frozen projection plus the scaled update"),
    ("output", "the feed-forward block's output, through the adapted inner projection"),
)


@functools.lru_cache(maxsize=None)
def _lora_run():
    """The values `lora` shows, computed once: every framework traced on the same adapted block."""
    from conformance.core import lora as lora_lib
    cfg = registry.get("feed_forward").config().replace(d_model=4, d_ff=6)
    lcfg = lora_lib.LoraConfig(rank=2, alpha=4.0, targets=("inner",))
    base = {k: np.round(v.astype(np.float64), 2) for k, v in weights.initialize(cfg, seed=0, std=0.5).items()}
    adapters = {k: np.round(v, 2) for k, v in
                lora_lib.initialize(lora_lib.adapters(weights.shapes(cfg, lcfg)), seed=0, zero_b=False).items()}
    w = {**base, **adapters}
    x = _readable((1, 2, cfg.d_model))
    reference = build("numpy", cfg, w, dtype="float64", lora=lcfg).trace(x=x)[1]
    twins = {(fw, dt): build(fw, cfg, w, dtype=dt, lora=lcfg).trace(x=x)[1] for fw, dt in TWINS}
    merged = lora_lib.merge(w, lcfg)
    plain = build("numpy", cfg, merged, dtype="float64")(x=x)["output"]
    count = lora_lib.count(lora_lib.linear_shapes(weights.shapes(cfg), lcfg), lcfg)
    return cfg, lcfg, base, adapters, x, reference, twins, merged, plain, count


def lora(fmt: str = "md") -> str:
    """LoRA on a feed-forward block small enough to print: adapters (r = 2) on its `inner` projection,
    each step traced in every framework against the NumPy reference, then the merged kernel
    W + s A B run as a plain block, and the parameter count r (in + out) against in x out."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}; received format={fmt!r}")
    cfg, lcfg, base, adapters, x, reference, twins, merged, plain, count = _lora_run()
    h = (lambda level, text: f"{'#' * level} {text}") if fmt == "md" else (lambda level, text: text.upper())
    code = (lambda text: f"```\n{text}\n```") if fmt == "md" else (lambda text: text)
    a, b = adapters["inner.lora_a.kernel"], adapters["inner.lora_b.kernel"]
    lines = [h(1, "LoRA: a frozen projection plus a low-rank update"), "",
             "y = x W + b + s (x A) B with A (in x r), B (r x out), s = alpha / r (`numpy_ref.lora.LoraLinear`). "
             f"Here a feed-forward block (D = {cfg.d_model}, F = {cfg.d_ff}) with adapters on its `inner` "
             f"projection: r = {lcfg.rank}, alpha = {lcfg.alpha:g}, s = {lcfg.scaling:g}. B is random here so that "
             "the update shows; training starts it at zero (peft's initialisation), where y is the base "
             "block's exactly.", "",
             "x (1, 2, 4):", "", code(_array(x)), "", "W = inner.kernel (4, 6), frozen:", "",
             code(_array(base["inner.kernel"])), "", "A = inner.lora_a.kernel (4, 2):", "", code(_array(a)), "",
             "B = inner.lora_b.kernel (2, 6):", "", code(_array(b)), ""]
    for op, what in LORA_STEPS:
        rows = [(f"{fw} {dt}", f"{_max_abs(records[op], reference[op]):.1e}",
                 "yes" if within(records[op], reference[op], dt) else "NO") for (fw, dt), records in twins.items()]
        lines += [h(2, f"`{op}`"), "", what + f", {_shape(reference[op])}:", "", code(_array(reference[op])), "",
                  tabulate(rows, ["framework", "max abs vs numpy float64", "within tolerance"],
                           tablefmt="github" if fmt == "md" else "simple"), ""]
    lines += [h(2, "Merged"), "", f"W' = W + s A B folds the adapter into the kernel "
              "(`conformance.core.lora.merge`); the plain block on W' gives the same output:", "",
              code(_array(merged["inner.kernel"])), "",
              f"max |plain block on W' - adapted block| = {_max_abs(plain, reference['output']):.1e}", "",
              h(2, "Parameters"), "",
              f"The adapter trains r (in + out) = {lcfg.rank} x ({cfg.d_model} + {cfg.d_ff}) = {count['lora']} numbers "
              f"against in x out = {count['full']} for the kernel itself; at BERT-base's 768 x 768 query with r = 8, "
              "12,288 against 589,824 (2.1%).", ""]
    prose = lambda line: line[:1] not in ("|", "`", "[", " ") or line.startswith("`conformance")  # noqa: E731
    return "\n".join("\n".join(_wrap(line, WIDTH)) if len(line) > WIDTH and prose(line) else line for line in lines)
