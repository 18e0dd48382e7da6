"""Compare any two implementations op by op, on one set of weights and inputs.

    import conformance
    r = conformance.compare("keras-hub", "transformers", preset="bert-tiny", std=0.2)
    r.first            # the first op out of tolerance (a Comparison), or None
    r.verdicts[0]      # replayed there: does that op introduce the error or inherit it?
    print(r.markdown())

An implementation is named by a string: a mirror ("numpy", "torch", "tf"), "reference" (the
float64 NumPy mirror, the default `b`), "keras-torch" / "keras-jax" (the Keras mirror on Keras's
torch or JAX backend, in a subprocess: Keras fixes its backend when it is first imported), "onnx" /
"onnx-tf" (the torch or Keras mirror exported and run in onnxruntime), "transformers", "keras-hub",
or "module:PATH.py:FACTORY", a user's own model: a file whose
FACTORY(cfg, weights) returns a `torch.nn.Module` or a Keras model with the weights loaded and whose
`MODULES` is its name map (a table {canonical module: (its module path, leaves)}, as the families'
are). "NAME@DTYPE" runs it in DTYPE. An object `Model(model, modules)` is a user's model in memory.

Every side is traced under the canonical names: the mirrors tap them, ONNX keeps the module outputs
its graph has, and the external models are traced by module (`conformance.compare.external`). The
ops both sides have are compared in the reference's order under one tolerance row (the lower
precision of the two); the first op out of tolerance is replayed: A's module that produced it is run
again on B's recorded value of its input, so that

    introduced = | A_op(x_B) - B_op(x_B) |     total = | A_op(x_A) - B_op(x_B) |

say whether the op itself computes differently (introduced out of tolerance) or received its
difference from upstream (inherited: the ops between were below tolerance one by one, or not
traced on both sides). Where A cannot replay (an ONNX graph, a Keras backend in another process) B's
op is replayed on A's input instead, and the report says which way it went.
"""
from __future__ import annotations

import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from conformance import weights as weights_lib
from conformance.backends import backend, build
from conformance.backends.dtypes import DTYPES
from conformance.compare import keras_backends
from conformance.compare.external import Canonical, External, Note
from conformance.compare.tolerance import TOLERANCES, Comparison, compare as compare_tensors
from conformance.core.config import Config
from conformance.core.trace import Summary
from conformance.spec import families, presets

MIRRORS = ("numpy", "torch", "tf")
KERAS = keras_backends.NAMES  # the Keras mirror on another Keras backend
NAMED = MIRRORS + ("reference",) + tuple(KERAS) + ("onnx", "onnx-tf", "transformers", "keras-hub")
LOOSENESS = ("float64", "float32", "tf32", "mixed_float16", "float16", "mixed_bfloat16", "bfloat16")


@dataclass
class Model:
    """A user's own model in memory: a `torch.nn.Module` or a Keras model with the shared weights
    loaded, and its name map {canonical module: (module path, leaves)} (see docs/harness/compare.md)."""
    model: object
    modules: dict
    label: str = "user model"
    call: Callable | None = None  # call(model, inputs) -> {output name: array}; default: by signature


@dataclass
class Side:
    """One implementation, traced: its outputs and records under canonical names."""
    label: str
    dtype: str
    outputs: dict
    records: dict
    notes: list = field(default_factory=list)
    replayer: Callable | None = None         # (trace name, data input) -> output, or None
    input_of: Callable = lambda name: None   # trace name -> trace name of the data input of its op
    no_replay: str = ""                      # why replayer is None
    seconds: float = 0.0
    inside: Callable = lambda name: None     # trace name it lacks -> the module that computes it inside
    op_input: Callable = lambda name: None   # trace name -> (canonical module, its recorded data input)
    replayed: str = ""                       # the module the last replay ran


@dataclass(frozen=True)
class Verdict:
    """Replay of one op: A's op on B's recorded input (or, `reversed`, B's op on A's)."""
    name: str
    input: str | None
    introduced: float | None
    total: float
    passed: bool | None         # the introduced error within tolerance; None: not replayed
    reversed: bool = False
    says: str = ""

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return "not replayed"
        return "inherits it" if self.passed else "introduces it"


@dataclass
class Report:
    a: Side
    b: Side
    tolerance: str
    preset: str
    cfg: Config
    fingerprint: str
    inputs: dict
    ops: list                 # Comparison per op both sides trace, canonical order
    outputs: list             # Comparison per output key
    only_a: list
    only_b: list
    verdicts: list            # replays from the first divergence on, until one introduces

    @property
    def first(self) -> Comparison | None:
        return next((c for c in self.ops if not c.passed), None)

    @property
    def culprit(self) -> Verdict | None:
        """The first replayed op that introduces the error."""
        return next((v for v in self.verdicts if v.passed is False), None)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.ops + self.outputs)

    def summary(self) -> str:
        first, culprit = self.first, self.culprit
        if first is None:
            return f"{self.a.label} and {self.b.label} agree on all {len(self.ops)} common ops ({self.tolerance} tolerance)"
        line = f"first op out of tolerance: {first.name} (max abs {first.max_abs:.2e})"
        v = self.verdicts[0] if self.verdicts else None
        if v is not None:
            line += f"; replayed on {'A' if v.reversed else 'B'}'s input it {v.verdict}"
            if v.introduced is not None:
                line += f" (introduced {v.introduced:.2e} of {v.total:.2e})"
        if culprit is not None and culprit.name != first.name:
            line += f"; the first op that introduces error: {culprit.name}"
        return line

    def markdown(self, top: int | None = None, title: str | None = None) -> str:
        """The report as Markdown: sides, outputs, the first divergence and its replay, every op (or the
        `top` worst and the first), what was not compared and why."""
        return markdown(self, top, title)


# ------------------------------------------------------------------------------------- the sides

def _spec(x) -> tuple[object, str | None]:
    if isinstance(x, str) and "@" in x:
        name, dtype = x.rsplit("@", 1)
        if dtype not in DTYPES:
            raise ValueError(f"the dtype after '@' must be one of {list(DTYPES)}; received {x!r}")
        return name, dtype
    return x, None


def _check_name(x) -> None:
    if isinstance(x, Model) or (isinstance(x, str) and (x in NAMED or x.startswith("module:"))):
        return
    raise ValueError(f"an implementation must be one of {list(NAMED)}, 'module:PATH.py:FACTORY' or a "
                     f"conformance.compare.Model; received {x!r}")


def side(spec, cfg: Config, w: dict, inputs: dict, canon: Canonical, reference, dtype: str = "float32",
         summary: bool = False) -> Side:
    """Trace one implementation on (cfg, w, inputs)."""
    what, at = _spec(spec)
    _check_name(what)
    dtype = at or ("float64" if what == "reference" else dtype)
    if what == "reference":
        return _mirror_side("numpy", cfg, w, inputs, "float64", summary, built=reference, label="reference")
    if what in MIRRORS:
        return _mirror_side(what, cfg, w, inputs, dtype, summary)
    if isinstance(what, str) and what in KERAS:
        return _keras_backend_side(KERAS[what], cfg, w, inputs, canon, dtype)
    if what in ("onnx", "onnx-tf"):
        return _onnx_side(what, cfg, w, inputs, summary)
    if what == "transformers":
        return _external_side(_transformers(cfg, w, dtype), cfg, w, inputs, canon, dtype, summary)
    if what == "keras-hub":
        return _external_side(_keras_hub(cfg, w, dtype), cfg, w, inputs, canon, dtype, summary)
    return _external_side(_user(what, cfg, w), cfg, w, inputs, canon, dtype, summary)


def _mirror_side(framework, cfg, w, inputs, dtype, summary, built=None, label=None) -> Side:
    m = built or build(framework, cfg, w, dtype=dtype)
    import time
    started = time.perf_counter()
    outputs, records = m.trace(capture="*", summary=summary, **inputs)
    seconds = time.perf_counter() - started
    own = Canonical.of(m, records, cfg) if not summary else None
    by_name = {} if own is None else _deepest_module(own)

    def input_of(name):
        path = by_name.get(name)
        if path is None or own is None or path not in own.first_input:
            return None
        x = own.first_input[path]
        before = own.names[:own.names.index(name)]
        return next((n for n in reversed(before) if np.shape(records[n]) == x.shape
                     and np.array_equal(records[n], x)), None)

    def replayer(name, data):
        path = by_name[name]
        args, kwargs, _ = m.calls[path]
        x = own.first_input[path]
        data = np.asarray(data).astype(x.dtype).reshape(x.shape)
        swap = lambda v: data if isinstance(v, np.ndarray) and v.shape == x.shape and np.array_equal(v, x) else v  # noqa: E731
        out = m.replay(path, [swap(a) for a in args], {k: swap(v) for k, v in kwargs.items()})
        return next(iter(out.values())) if isinstance(out, dict) else out

    def op_input(name):
        path = by_name.get(name)
        return None if path is None or path not in own.first_input else (path, own.first_input[path])

    def replay_any(name, data, module=None):
        side_.replayed = by_name[name]
        return replayer(name, data)

    side_ = Side(label or f"{framework} mirror", dtype, outputs, records, [], None if summary else replay_any,
                 input_of, "traced in summary mode" if summary else "", seconds,
                 op_input=(lambda name: None) if summary else op_input)
    return side_


def _deepest_module(own: Canonical) -> dict:
    """Trace name -> the deepest module whose output it is (a tap inside a module: that module)."""
    out = {}
    for path in sorted(own.output_of, key=lambda p: p.count(".")):
        out[own.output_of[path]] = path
    for name in own.names:
        if name not in out:
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            if owner in own.output_of:
                out[name] = owner  # replays `owner`: compared at its output, below
    return {n: p for n, p in out.items() if own.output_of.get(p) == n}


def _onnx_side(what, cfg, w, inputs, summary) -> Side:
    source = "tf" if what == "onnx-tf" else "torch"
    m = build("onnx", cfg, w, source=source)
    import time
    started = time.perf_counter()
    outputs, records = m.trace(summary=summary, **inputs)
    return Side(f"onnx (exported from the {source} mirror by {m.module.exported.exporter})", "float32", outputs,
                records, [], None, lambda name: None, "an ONNX graph has no module to run alone",
                time.perf_counter() - started)


def _keras_backend_side(backend, cfg, w, inputs, canon, dtype) -> Side:
    """The tf mirror on another Keras backend, traced in its subprocess. Its modules cannot run here, so
    the replay runs the other side's module on this side's recorded input (the module paths are the
    reference's: the mirrors share one module tree)."""
    run = keras_backends.keras_backend_trace(backend, cfg, w, inputs, dtype)
    if run.error:
        raise RuntimeError(run.error)
    by_name = _deepest_module(canon)

    def op_input(name):
        path = by_name.get(name)
        return None if path not in run.module_inputs else (path, run.module_inputs[path])

    notes = [Note("(every op)", "known", run.note)] if run.note else []
    return Side(f"tf mirror on Keras's {backend} backend ({run.device})", dtype, run.outputs, run.records, notes,
                None, lambda name: None, f"Keras on {backend} runs in a subprocess (Keras fixes its backend when it is "
                                         "first imported): none of its modules can be run alone from here",
                run.seconds, op_input=op_input)


def _external_side(made: tuple, cfg, w, inputs, canon, dtype, summary) -> Side:
    model, modules, fw, call, label, base = made
    ext = External(model, modules, cfg, canon, backend(fw), call, label, base=base, dtype=dtype)
    ext.check_weights(w)
    run = ext.trace(inputs, summary=summary)
    def replayer(name, data, module=None):
        out = ext.replay(run, name, data, module)
        side_.replayed = f"{ext.replayed} ({type(ext.tree[ext.replayed]).__name__})"
        return out

    side_ = Side(label, dtype, run.outputs, run.records, run.notes,
                None if summary else replayer,
                lambda name: ext.input_of(run, name), "traced in summary mode" if summary else "", run.seconds,
                ext.inside, (lambda name: None) if summary else (lambda name: ext.op_input(run, name)))
    return side_


def _transformers(cfg, w, dtype):
    import torch

    from conformance.oracles import transformers as hf
    table = families.get(cfg.kind).checkpoint(cfg)
    cls = hf.class_name(cfg)
    if cls is None or dtype not in ("float64", "float32", "bfloat16", "float16"):
        raise ValueError(f"transformers has no {cfg.kind} model with head={cfg.head!r} in dtype={dtype!r}"
                         if cls is None else f"transformers runs float64, float32, bfloat16 or float16 here; "
                                             f"received dtype={dtype!r}")
    model = hf.transformers_model(cfg, w, "eager", dtype)
    model.config.use_cache = False

    def call(model, ours):
        x = {k: torch.from_numpy(np.asarray(v)) for k, v in ours.items() if v is not None}
        with torch.no_grad():
            out = model(**x, output_hidden_states=True)
        got = {hf.OUR_NAMES.get(k, k): hf.numpy_of(v) for k, v in out.items() if isinstance(v, torch.Tensor)}
        got.setdefault("last_hidden_state", hf.numpy_of(out.hidden_states[-1]))
        return got

    base = "" if cls == table.base_class else table.prefix
    return model, table.modules, "torch", call, f"transformers {cls} ({dtype})", base


def _keras_hub(cfg, w, dtype):
    from conformance.oracles import keras_hub as kho
    model = kho.load(kho.backbone(cfg, dtype), cfg, w)
    forward = kho.forward(model, cfg)

    def call(model, ours):
        return {k: np.asarray(v) for k, v in forward(kho.inputs(cfg, **ours)).items()}

    return model, kho.table(cfg).modules, "tf", call, f"keras-hub {kho.table(cfg).backbone} ({dtype})", ""


def _user(spec, cfg, w):
    if isinstance(spec, Model):
        model, modules, label, call = spec.model, spec.modules, spec.label, spec.call
    else:
        model, modules, label = load_factory(spec, cfg, w)
        call = None
    fw = framework_of(model, label)
    modules = modules(cfg) if callable(modules) else modules
    return model, modules, fw, call or _default_call(fw), label, ""


def load_factory(spec: str, cfg, w):
    """'module:PATH.py:FACTORY' -> (FACTORY(cfg, w), the file's MODULES, a label)."""
    parts = spec.split(":")
    if len(parts) != 3 or not parts[2]:
        raise ValueError(f"a user's model is named 'module:PATH.py:FACTORY'; received {spec!r}")
    path = Path(parts[1])
    if not path.is_file():
        raise ValueError(f"no factory file {str(path)!r} (from {spec!r})")
    loaded = importlib.util.spec_from_file_location(f"tmirror_user_{path.stem}", path)
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    factory = getattr(module, parts[2], None)
    if not callable(factory):
        defined = sorted(n for n, f in vars(module).items() if inspect.isfunction(f) and f.__module__ == module.__name__)
        raise ValueError(f"{path} has no function {parts[2]!r}; it defines {defined}")
    if not hasattr(module, "MODULES"):
        raise ValueError(f"{path} defines no MODULES: the name map {{canonical module: (module path, leaves)}}")
    model = factory(cfg, w)
    framework_of(model, f"{path.name}:{parts[2]}")
    return model, module.MODULES, f"{path.name}:{parts[2]}"


def framework_of(model, label: str) -> str:
    """'torch' for a torch.nn.Module, 'tf' for a Keras layer or model; anything else is refused."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        return "torch"
    keras = sys.modules.get("keras")
    if keras is not None and isinstance(model, keras.Layer):
        return "tf"
    raise ValueError(f"{label} returned {type(model).__module__}.{type(model).__name__}, not a torch.nn.Module "
                     f"or a keras.Model")


def _default_call(fw: str):
    """Call a user's model with the inputs its forward takes, by name; a single tensor out is `logits`
    or `last_hidden_state`, whichever the reference's shape it has."""
    def call(model, ours):
        b = backend(fw)
        forward = model.forward if fw == "torch" else model.call
        accepted = inspect.signature(forward).parameters
        given = {k: v for k, v in ours.items() if v is not None and (k in accepted or any(
            p.kind is p.VAR_KEYWORD for p in accepted.values()))}
        x = b.inputs(given, "float32")
        out = b.call_module(model, (), x)
        if isinstance(out, dict):
            return {k: np.asarray(b.to_numpy(v)) for k, v in out.items()}
        return {"output": np.asarray(b.to_numpy(out))}
    return call


# --------------------------------------------------------------------------------- the comparison

def looser(a: str, b: str) -> str:
    return max(a, b, key=LOOSENESS.index)


def setup(preset=None, cfg=None, weights=None, inputs=None, batch=2, seq_len=16, seed=0, std=0.02):
    """(preset label, cfg, weights, inputs): a preset's (or `cfg`'s) seeded weights and inputs unless given."""
    if cfg is None:
        if preset is None:
            raise ValueError("give preset= (see `tmirror models`) or cfg=")
        cfg = presets.get(preset)
    label = preset or next((n for n in presets.names() if presets.get(n) == cfg), f"custom {cfg.kind}")
    w = weights if weights is not None else weights_lib.initialize(cfg, seed=seed, std=std)
    weights_lib.check(cfg, w)
    if inputs is None:
        inputs = families.get(cfg.kind).inputs(cfg, batch, min(seq_len, cfg.max_positions), seed)
    return label, cfg, w, inputs


def compare(a, b="reference", *, preset=None, cfg=None, weights=None, inputs=None, dtype="float32",
            batch=2, seq_len=16, seed=0, std=0.02, summary=False, replays=8) -> Report:
    """Trace `a` and `b` on one set of weights and inputs; per-op errors, first divergence, replay.

    `dtype`: what every side but "reference" runs in unless its name says ("keras-hub@float64").
    `weights` default to `weights.initialize(cfg, seed, std)`, `inputs` to the family's run inputs
    (`batch` x `seq_len`). `replays`: how many out-of-tolerance ops to replay, from the first on,
    until one introduces the error."""
    for x in (a, b):
        _check_name(_spec(x)[0])
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}; received dtype={dtype!r}")
    label, cfg, w, inputs = setup(preset, cfg, weights, inputs, batch, seq_len, seed, std)
    reference = build("numpy", cfg, w, dtype="float64")
    _, records = reference.trace(capture="*", **inputs)
    canon = Canonical.of(reference, records, cfg)
    if "reference" not in (_spec(a)[0], _spec(b)[0]):
        reference = None  # its names are kept; a full-size model's float64 copy is the largest thing here
    side_a = side(a, cfg, w, inputs, canon, reference, dtype, summary)
    side_b = side(b, cfg, w, inputs, canon, reference, dtype, summary)
    row = looser(side_a.dtype, side_b.dtype)
    tol = TOLERANCES[row]
    common = [n for n in canon.names if n in side_a.records and n in side_b.records]
    ops = [_compare(n, side_a.records[n], side_b.records[n], tol) for n in common]
    keys = sorted(side_a.outputs.keys() & side_b.outputs.keys())
    outputs = [compare_tensors(k, side_a.outputs[k], side_b.outputs[k], tol) for k in keys]
    report = Report(side_a, side_b, row, label, cfg, weights_lib.fingerprint(w),
                    {k: np.shape(v) for k, v in inputs.items() if v is not None}, ops, outputs,
                    [n for n in canon.names if n in side_a.records and n not in side_b.records],
                    [n for n in canon.names if n in side_b.records and n not in side_a.records], [])
    out_of = [c for c in ops if not c.passed][:replays]
    for c in out_of:
        report.verdicts.append(replay(side_a, side_b, c, tol))
        if report.verdicts[-1].passed is not True:  # introduced here, or no way to tell: stop
            break
    return report


def _compare(name, a, b, tol) -> Comparison:
    if isinstance(a, Summary) or isinstance(b, Summary):
        from conformance.compare.divergence import compare_summaries
        a = a if isinstance(a, Summary) else Summary.of(np.asarray(a))
        b = b if isinstance(b, Summary) else Summary.of(np.asarray(b))
        return compare_summaries(name, a, b, tol)
    return compare_tensors(name, a, b, tol)


def replay(a: Side, b: Side, c: Comparison, tol) -> Verdict:
    """A's op at `c.name` on B's recorded value of its input; B's on A's where A cannot replay."""
    for first, second, flipped in ((a, b, False), (b, a, True)):
        if first.replayer is None:
            continue
        source = first.input_of(c.name)
        if source is None:
            continue
        if source not in second.records or isinstance(second.records[source], Summary):
            continue
        got = first.replayer(c.name, second.records[source])
        want = second.records[c.name]
        introduced = compare_tensors(c.name, got, want, tol)
        return Verdict(c.name, source, introduced.max_abs, c.max_abs, introduced.passed, flipped,
                       f"{first.label}'s {first.replayed or 'op'} run on {second.label}'s {source}")
    for first, second, flipped in ((a, b, False), (b, a, True)):  # no named input: the same module's own input
        mine, theirs = first.op_input(c.name), second.op_input(c.name)
        if first.replayer is None or mine is None or theirs is None or mine[0] != theirs[0] \
                or np.size(mine[1]) != np.size(theirs[1]):
            continue
        got = first.replayer(c.name, theirs[1], mine[0])
        introduced = compare_tensors(c.name, got, second.records[c.name], tol)
        return Verdict(c.name, f"{mine[0]} (its input)", introduced.max_abs, c.max_abs, introduced.passed, flipped,
                       f"{first.label}'s {first.replayed} run on the input {second.label} recorded for {mine[0]} "
                       f"(a tensor no trace name holds)")
    why = "; ".join(dict.fromkeys(s.no_replay or f"{s.label} records no traced op as its input" for s in (a, b)))
    return Verdict(c.name, None, None, c.max_abs, None, False, f"not replayed: {why}")


# ------------------------------------------------------------------------------------ the report

def _row(c: Comparison) -> str:
    return f"| `{c.name}` | {c.max_abs:.2e} | {c.max_rel:.2e} | {'ok' if c.passed else '**OUT**'} |"


def markdown(r: Report, top: int | None = None, title: str | None = None) -> str:
    lines = [f"# {title or f'{r.a.label} against {r.b.label}'}", "",
             f"A: **{r.a.label}**; B: **{r.b.label}**. Preset `{r.preset}` "
             f"({r.cfg.num_layers} layers, d_model {r.cfg.d_model}), weights fingerprint `{r.fingerprint}`, "
             f"inputs " + ", ".join(f"`{k}` {tuple(v)}" for k, v in r.inputs.items())
             + f"; the `{r.tolerance}` tolerance row (atol {TOLERANCES[r.tolerance].atol:g}, rtol "
               f"{TOLERANCES[r.tolerance].rtol:g}, max-norm {TOLERANCES[r.tolerance].scale_rtol:g}).", "",
             f"**{r.summary()}.**", ""]
    if r.verdicts:
        lines += ["## Replay", "",
                  "A's op run again on B's recorded value of its input (reversed: B's op on A's input): the error "
                  "the op introduces itself, against the total difference there.", "",
                  "| op | input replaced | introduced | total | verdict | how |", "|---|---|---|---|---|---|"]
        for v in r.verdicts:
            lines.append(f"| `{v.name}` | {f'`{v.input}`' if v.input else '-'} | "
                         f"{'-' if v.introduced is None else f'{v.introduced:.2e}'} | {v.total:.2e} | "
                         f"{v.verdict} | {v.says}{' (reversed)' if v.reversed else ''} |")
        lines.append("")
    lines += ["## Outputs", "", "| output | max abs | max rel | |", "|---|---|---|---|"]
    lines += [_row(c) for c in r.outputs] + [""]
    ops = r.ops
    if top is not None and len(ops) > top:
        worst = sorted(ops, key=lambda c: -c.max_abs)[:top]
        ops = [c for c in r.ops if c in worst or c is r.first]
        heading = f"## Ops: the {top} largest differences and the first out of tolerance (of {len(r.ops)})"
    else:
        heading = f"## Ops ({len(ops)} traced by both, in execution order)"
    lines += [heading, "", "| op | max abs | max rel | |", "|---|---|---|---|"] + [_row(c) for c in ops] + [""]
    for s, only in ((r.a, r.only_a), (r.b, r.only_b)):
        missing = [n for n in (r.b if s is r.a else r.a).records if n not in s.records]
        if missing:
            lines += [f"## Canonical ops {s.label} does not trace ({len(missing)})", "",
                      "Computed inside a module with no counterpart of its own (fused away), or not kept by the "
                      "graph: compared only through the ops after them.", "", "| op | computed inside |", "|---|---|"]
            lines += [f"| `{n}` | {f'`{s.inside(n)}`' if s.inside(n) else '-'} |" for n in missing] + [""]
    for s in (r.a, r.b):
        if s.notes:
            lines += [f"## {s.label}: modules not compared one to one", "", "| module | kind | why |", "|---|---|---|"]
            lines += [f"| `{n.path}` | {n.kind} | {n.says} |" for n in s.notes] + [""]
    return "\n".join(lines)
