"""Tracing a model this project did not write, by module, under the canonical trace names.

    canon = Canonical.of(reference, inputs)              # the names, from a mirror's own trace
    ext = External(model, modules, cfg, canon, label="transformers BertModel")
    run = ext.trace(inputs)                              # run.records: {canonical trace name: tensor}
    y = ext.replay(run, "encoder.0.feed_forward.activation.output", x_from_another_model)

A mirror taps its own ops by name (`conformance.core.trace`). A model of another library, or a
user's own, has no taps, but it has modules: forward hooks on a `torch.nn.Module` (transformers',
a user's) and an intercepted `call` on each Keras layer (keras-hub's, a user's) record each
module's input and output. The family's tables say which module is which: `Checkpoint.modules`
and `KerasHub.modules` map a canonical module (`encoder.{i}.attention.query`) to the library's
(`bert.encoder.layer.{i}.attention.self.query`), the same rows `weights.from_hf` and the keras-hub
oracle read. A user's own model comes with a table of the same form. From the rows:

- **Direct pairs.** Each row's external module's output is the canonical module's output, named
  by the reference's trace key for it (`encoder.0.attention.query.output`). A row whose leaves
  are parts of one fused tensor (GPT-2's `c_attn` holds query, key and value) is split along its
  last axis into those parts. An external module that two rows map (keras-hub's
  `token_embedding`, called once to embed and once, reversed, for the untied head) is paired by
  call order. A per-head output (keras-hub's `EinsumDense`, (B, T, H, Dh)) is reshaped to the
  canonical (B, T, D) when the element counts agree.
- **Containers.** A canonical module with no row of its own (a whole layer, `layers.{i}`) pairs
  with the deepest external module that holds every row under it and no row outside it
  (`model.layers.{i}`). Where the parent paths do not pair consistently (transformers'
  `BertAttention` also holds the residual's layer norm, `attention_norm` in canonical terms) there is
  no pair, and the report says which canonical modules the external one spans.
- **Data flow.** A parameter-free external module (an activation) whose input is a paired module's
  output pairs with the one parameter-free canonical module that takes that output in the
  reference (`intermediate.intermediate_act_fn` <-> `feed_forward.activation`).
- **Fused activations.** A Keras `Dense` or `EinsumDense` with an activation of its own returns
  the activation's output: it is compared with the op that follows the canonical module in the
  reference's trace (`feed_forward.activation.output`), and the report says the canonical
  module's own output is fused away inside it.

Every external module that is called and not paired is listed with the reason (no parameters
and no canonical counterpart, passes its input through, spans several canonical modules), and
every canonical op no external module produces is listed by the comparison: nothing is dropped
silently. A table row whose external module is not in the model is an error naming the row and
the nearest module paths the model has (difflib).
"""
from __future__ import annotations

import difflib
import fnmatch
import time
from dataclasses import dataclass, field

import numpy as np

from conformance.compare.replay import output_key
from conformance.core.config import Config
from conformance.core.trace import Summary
from conformance.spec import registry
from conformance.spec.leaves import table_rows
from conformance.weights import canonical as weights_lib


# ------------------------------------------------------------------------- what the reference says

@dataclass
class Canonical:
    """The canonical names of one config, read off a mirror's traced run: the trace names in order,
    each module's output trace key, the modules that own parameters, and each module's first input."""
    names: list            # trace names, in execution order
    output_of: dict        # module path -> trace key of its first call's output (where it is traced)
    params: set            # module paths that own parameters, themselves or below
    modules: list          # every module path, in the mirror's tree order
    first_input: dict      # module path -> its first call's first argument (NumPy)
    values: dict           # trace name -> the reference's tensor

    @classmethod
    def of(cls, built, records: dict, cfg: Config) -> "Canonical":
        """From `built` (a mirror) after `built.trace(capture="*", ...)` returned `records` (full tensors)."""
        modules = [p for p, _ in built.backend.named_modules(built.module)]
        output_of, first_input = {}, {}
        for path, (args, kwargs, out) in built.calls.items():
            if path and isinstance(out, np.ndarray):
                key = output_key(path, out, records)
                if key is not None:
                    output_of[path] = key
            data = next((a for a in list(args) + list(kwargs.values()) if _is_float_array(a)), None)
            if data is not None:
                first_input[path] = data
        params = set()
        for name in registry.param_shapes(cfg):
            parts = name.split(".")[:-1]
            params.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        return cls(list(records), output_of, params, modules, first_input, records)

    def after(self, name: str) -> str | None:
        """The trace name right after `name`."""
        i = self.names.index(name)
        return self.names[i + 1] if i + 1 < len(self.names) else None


def _is_float_array(x) -> bool:
    return isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating)


def _under(path: str, ancestor: str, sep: str = ".") -> bool:
    return ancestor == "" or path == ancestor or path.startswith(ancestor + sep)


# ------------------------------------------------------------------------------------ the pairing

@dataclass(frozen=True)
class Pair:
    """One external module call <-> one canonical trace name."""
    external: str          # the external module's path
    canonical: str         # the canonical module it stands for
    name: str              # the trace name its output is compared under
    how: str               # "table", "container", "data flow", "fused activation"
    call: int = 0          # which call of the external module
    part: tuple | None = None  # (j, parts): slice j of `parts` equal slices of the last axis
    says: str = ""         # what the report prints beside it


@dataclass
class Note:
    """What the report says about a module that is not compared one to one."""
    path: str
    kind: str              # "unpaired", "fused", "container", "not traced"
    says: str


def rows_of(modules: dict, cfg: Config, base: str = "") -> list[tuple[str, str, object]]:
    """(canonical module, external module, leaf) for each parameter of `cfg` a table maps ("{base}" -> base)."""
    out = []
    for name, external, leaf in table_rows(modules, registry.param_shapes(cfg)):
        out.append((name.rsplit(".", 1)[0], external.replace("{base}", base), leaf))
    return out


def _nearest(path: str, known: list, sep: str) -> list:
    return difflib.get_close_matches(path, known, n=3, cutoff=0.5) or [p for p in known if p][:3]


def pair_modules(rows: list, canon: Canonical, tree: dict, sep: str, fused=lambda path: None, label: str = "model"
                 ) -> tuple[list[Pair], list[Note]]:
    """The pairs and notes for a table's `rows` on an external module `tree` {path: module}.

    `fused(path)` names the activation an external module applies itself (a Keras Dense's), or None."""
    missing = sorted({e for _, e, _ in rows if e not in tree})
    if missing:
        canonical = next(c for c, e, _ in rows if e == missing[0])
        raise ValueError(f"the table maps canonical module {canonical!r} to {missing[0]!r}, which {label} does not "
                         f"have; nearest module paths there: {_nearest(missing[0], list(tree), sep)}"
                         + (f" ({len(missing) - 1} more unknown: {missing[1:4]})" if len(missing) > 1 else ""))
    pairs, notes = [], []
    by_external: dict[str, list] = {}
    for module, external, leaf in rows:
        entry = (module, (leaf.part, leaf.parts) if leaf.part is not None else None)
        if entry not in by_external.setdefault(external, []):
            by_external[external].append(entry)
    for external, entries in by_external.items():
        split = all(part is not None for _, part in entries)
        ordered = sorted(entries, key=lambda e: canon.names.index(canon.output_of[e[0]])
                         if e[0] in canon.output_of else len(canon.names))
        for call_index, (module, part) in enumerate(ordered):
            key = canon.output_of.get(module)
            if key is None:
                notes.append(Note(module, "not traced", f"the reference does not trace {module}'s output"))
                continue
            activation = fused(external)
            how, says, name = "table", "", key
            if split:
                how, says = "table", f"slice {part[0] + 1} of {part[1]} of the last axis"
            if activation:
                name = canon.after(key)
                how, says = "fused activation", (f"applies its activation ({activation}) itself: compared with "
                                                 f"{name}; {key} is fused away inside it")
                notes.append(Note(external, "fused", says))
            pairs.append(Pair(external, module, name, how, 0 if split else call_index, part, says))
    direct = {p.canonical: p.external for p in pairs}
    taken = set(direct.values())
    placed = [(c, e) for c, e in {(c, e) for e, entries in by_external.items() for c, _ in entries}]
    for module in sorted(canon.modules, key=lambda p: -p.count(".")):
        if not module or module in direct or module not in canon.params:
            continue
        inside = [e for c, e in placed if _under(c, module)]
        if not inside:
            continue
        parts = [e.split(sep) for e in inside]
        common = sep.join(os_common(parts))
        if not common or common in inside or common not in tree or common in taken:
            continue
        outside = sorted({c for c, e in placed if not _under(c, module) and _under(e, common, sep)})
        if outside:
            continue
        key = canon.output_of.get(module)
        if key is None:
            continue
        pairs.append(Pair(common, module, key, "container"))
        taken.add(common)
        placed.append((module, common))
    return pairs, notes


def os_common(parts: list[list[str]]) -> list[str]:
    """The longest common leading run of components."""
    out = []
    for group in zip(*parts):
        if len(set(group)) != 1:
            break
        out.append(group[0])
    return out


def spans(external: str, placed: list, sep: str) -> list[str]:
    """The canonical modules of the rows under the external module `external`."""
    return sorted({c for c, e in placed if _under(e, external, sep)})


# --------------------------------------------------------------------------------- the recording

@dataclass
class Call:
    path: str
    index: int               # the module's n-th call
    data: object             # the first float tensor argument, the framework's
    args: tuple
    kwargs: dict
    output: object           # the first tensor of the output, the framework's
    passes_input: bool       # returned its input object unchanged


@dataclass
class Run:
    """One traced forward of an external model."""
    outputs: dict                            # our output names -> NumPy
    records: dict                            # canonical trace name -> NumPy array or Summary, canonical order
    calls: dict = field(default_factory=dict)       # trace name -> [Call], innermost first (for replay)
    inputs: dict = field(default_factory=dict)      # trace name -> [trace name of each call's data input]
    pairs: dict = field(default_factory=dict)       # trace name -> [Pair of each call]
    notes: list = field(default_factory=list)
    seconds: float = 0.0


def first_tensor(x, is_tensor):
    if is_tensor(x):
        return x
    if isinstance(x, dict):
        x = list(x.values())
    elif hasattr(x, "to_tuple"):  # transformers' ModelOutput
        x = x.to_tuple()
    if isinstance(x, (list, tuple)):
        for item in x:
            found = first_tensor(item, is_tensor)
            if found is not None:
                return found
    return None


class External:
    """A model of another library (or a user's) traced by module, named canonically.

    `modules` is a table {canonical module: (external module path, leaves)} ("{i}" a layer index,
    "{base}" replaced by `base`), `call(model, inputs)` runs it on our NumPy inputs and returns our
    output names, and `backend` is the `Backend` of its framework ("torch", or "tf" for Keras)."""

    def __init__(self, model, modules: dict, cfg: Config, canon: Canonical, backend, call,
                 label: str, base: str = "", dtype: str = "float32"):
        self.model, self.cfg, self.canon, self.fw, self.run_model = model, cfg, canon, backend, call
        self.label, self.dtype, self.modules, self.base = label, dtype, modules, base
        self.tree = backend.external_modules(model)
        self.rows = rows_of(modules, cfg, base)
        self.pairs, self.notes = pair_modules(self.rows, canon, self.tree, backend.separator,
                                              lambda p: backend.fused_activation(self.tree[p]), label)
        self.by_path: dict[str, list[Pair]] = {}
        for p in self.pairs:
            self.by_path.setdefault(p.external, []).append(p)
        self.placed = [(p.canonical, p.external) for p in self.pairs]
        self.renamed: dict[str, str] = {}  # a pair's name -> the name `_boundaries` found its output has
        self.why: dict[str, str] = {}  # external module path -> why it has no canonical counterpart

    # ---- weights
    def exported(self) -> dict:
        """The model's weights read back through the table: canonical names, layout and the model's dtypes."""
        stored = self.fw.stored_weights(self.model)
        sep = self.fw.separator
        out = {}
        for name, external, leaf in table_rows(self.modules, registry.param_shapes(self.cfg)):
            path = f"{external.replace('{base}', self.base)}{sep}{leaf.external}"
            if path not in stored:
                raise ValueError(f"{self.label} has no weight {path!r} (table row {name}); nearest: "
                                 f"{_nearest(path, list(stored), sep)}")
            out[name] = np.ascontiguousarray(leaf.to_canonical(stored[path], self.cfg))
        return out

    def check_weights(self, w: dict) -> None:
        """Raise unless the model holds exactly the shared weights `w` (by fingerprint, in the model's dtypes)."""
        got = self.exported()
        want = {k: np.asarray(w[k]).astype(got[k].dtype) for k in got}
        if weights_lib.fingerprint(got) != weights_lib.fingerprint(want):
            differ = [k for k in got if got[k].shape != want[k].shape or not np.array_equal(got[k], want[k])]
            hint = next((f"; {k} is the shared one transposed" for k in differ
                         if got[k].ndim == 2 and got[k].shape == want[k].T.shape[::-1]
                         and np.array_equal(got[k], want[k].T.reshape(got[k].shape))), "")
            raise ValueError(f"{self.label} was not loaded from the shared weights: fingerprint "
                             f"{weights_lib.fingerprint(got)}, the shared set's {weights_lib.fingerprint(want)}; "
                             f"{len(differ)} of {len(got)} tensors differ, e.g. {differ[:3]}{hint}")

    # ---- tracing
    def trace(self, inputs: dict, summary: bool = False, keep=None) -> Run:
        """Run the model once on `inputs` with every module recorded; outputs and records by canonical name."""
        fw, calls = self.fw, []
        counts: dict[str, int] = {}

        def on_call(path, args, kwargs, output):
            index = counts.get(path, 0)
            counts[path] = index + 1
            data = next((a for a in list(args) + list(kwargs.values()) if fw.is_tensor(a) and _floating(a)), None)
            out = first_tensor(output, fw.is_tensor)
            calls.append(Call(path, index, data, args, kwargs, out, out is not None and out is data))

        started = time.perf_counter()
        with fw.recording_calls(self.model, self.tree, on_call):
            outputs = self.run_model(self.model, inputs)
        seconds = time.perf_counter() - started
        run = Run(outputs, {}, seconds=seconds, notes=list(self.notes))
        self._name_calls(run, calls, summary, keep)
        return run

    def _store(self, name, array, summary, keep):
        keeps = (keep,) if isinstance(keep, str) else (keep or ())
        if summary and not any(fnmatch.fnmatch(name, k) for k in keeps):
            return Summary.of(array)
        return array

    def _canonical_array(self, pair: Pair, tensor) -> np.ndarray:
        """The external output as the canonical tensor: its slice of a fused output, and a per-head
        (B, T, H, Dh) merged to the reference's (B, T, D) where only that differs."""
        a = np.asarray(self.fw.to_numpy(tensor))
        if pair.part is not None:
            a = np.split(a, pair.part[1], axis=-1)[pair.part[0]]
        want = np.shape(self.canon.values.get(pair.name, a))
        if a.shape != want and a.size == int(np.prod(want)) and (a.shape[:len(want) - 1] == want[:-1] or (
                a.ndim < len(want) and want[len(want) - a.ndim:] == a.shape)):  # heads merged; a leading 1 added
            a = a.reshape(want)
        elif a.shape != want and a.ndim == len(want) and all(w in (1, s) for w, s in zip(want, a.shape)):
            first = a[tuple(slice(0, 1) if w == 1 else slice(None) for w in want)]  # broadcast rows (positions)
            if np.array_equal(np.broadcast_to(first, a.shape), a):
                a = first
        return a

    def _name_calls(self, run: Run, calls: list, summary: bool, keep) -> None:
        fw, canon = self.fw, self.canon
        produced: dict[int, str] = {}  # id of a framework tensor -> the trace name it was recorded under
        found: dict[str, np.ndarray] = {}
        seen_unpaired: set = set()
        for c in calls:
            if c.output is None:
                continue
            pairs = [p for p in self.by_path.get(c.path, ()) if p.call == c.index or p.part is not None]
            if not pairs and c.path in self.by_path and c.index > 0:
                if c.path not in seen_unpaired:
                    seen_unpaired.add(c.path)
                    run.notes.append(Note(c.path, "unpaired", f"called again (call {c.index + 1}) where the table "
                                                              f"pairs one call: later calls not compared"))
                continue
            if not pairs:
                pairs = self._data_flow(c, produced, found, run, seen_unpaired)
            for p in pairs:
                if p.part is not None and c.index > 0:
                    continue
                run.calls.setdefault(p.name, []).append(c)  # an outer module with the same output: a second way
                run.inputs.setdefault(p.name, []).append(produced.get(id(c.data)))  # to replay it
                run.pairs.setdefault(p.name, []).append(p)
                if p.name in found:
                    continue
                found[p.name] = self._canonical_array(p, c.output)
                if p.part is None:
                    produced[id(c.output)] = p.name
        self._boundaries(run, found)
        for name in canon.names:  # in canonical order
            if name in found:
                run.records[name] = self._store(name, found[name], summary, keep)
        if summary:  # no replay in summary mode: the inputs recorded under no name are not looked for
            return
        for name, cs in run.calls.items():  # a data input recorded under no name: found by value
            run.inputs[name] = [self._by_value(c.data, found, name) if source is None and c.data is not None
                                else source for c, source in zip(cs, run.inputs[name])]

    def _boundaries(self, run: Run, found: dict) -> None:
        """Re-pair a module that computes its canonical parent's step too (transformers 5's Gemma embedding
        multiplies by sqrt(D) inside `embed_tokens`; the canonical `embeddings.token` does not, its parent
        `embeddings` does). Only where the parent holds no other row, and only when the output is far
        (10x) closer, relative to scale, to the reference's parent output than to its own."""
        canon = self.canon
        for p in [p for p in self.pairs if p.how == "table" and p.part is None and p.name in found]:
            parent = p.canonical.rsplit(".", 1)[0] if "." in p.canonical else ""
            key = canon.output_of.get(parent)
            if not parent or key is None or key == p.name or key in found \
                    or {c for c, _ in self.placed if _under(c, parent)} != {p.canonical}:
                continue
            a = found[p.name]
            own, up = canon.values[p.name], canon.values[key]
            if a.shape != up.shape:
                continue
            scale = lambda r: max(float(np.abs(r).max()), 1e-30)  # noqa: E731
            err_own = float(np.abs(a - own).max()) / scale(own)
            err_up = float(np.abs(a - up).max()) / scale(up)
            if err_up * 10 < err_own:
                found[key] = found.pop(p.name)
                run.calls[key] = run.calls.pop(p.name)
                run.inputs[key] = run.inputs.pop(p.name)
                run.pairs[key] = run.pairs.pop(p.name)
                for sources in run.inputs.values():  # whatever took its output took `key`
                    sources[:] = [key if source == p.name else source for source in sources]
                self.renamed[p.name] = key
                run.notes.append(Note(p.external, "boundary", f"{type(self.tree[p.external]).__name__} computes "
                                      f"{parent}'s step too: its output is the reference's {key} (relative error "
                                      f"{err_up:.1e}), not {p.name} ({err_own:.1e}); compared as {key}"))

    def _by_value(self, data, found: dict, before: str) -> str | None:
        """The trace name of a tensor recorded under none: an op of this run with exactly its value, else the
        reference's op before `before` it is far closest to (relative max error under 1e-2, 10x below the
        next; keras-hub's Gemma scales its embedding outside any layer: the reference's embeddings.output)."""
        a = np.asarray(self.fw.to_numpy(data))
        earlier = self.canon.names[:self.canon.names.index(before)]
        exact = next((n for n in reversed(earlier) if n in found and found[n].size == a.size
                      and np.array_equal(found[n].reshape(a.shape), a)), None)
        if exact is not None:
            return exact
        errors = sorted((float(np.abs(np.asarray(r, np.float64).reshape(a.shape) - a).max())
                         / max(float(np.abs(r).max()), 1e-30), n)
                        for n in earlier for r in [self.canon.values[n]] if np.size(r) == a.size)
        if errors and errors[0][0] < 1e-2 and (len(errors) == 1 or errors[0][0] * 10 < errors[1][0]):
            return errors[0][1]
        return None

    def _why_no_container(self, path: str, module) -> str:
        """Why an external module with parameters has no canonical counterpart: what it holds, in the
        largest canonical modules it holds whole, and what the nearest canonical module holds besides."""
        sep, placed = self.fw.separator, self.placed
        inside = {c for c, e in placed if _under(e, path, sep)}
        whole = [m for m in self.canon.modules if m and m in self.canon.params
                 and {c for c, _ in placed if _under(c, m)} and {c for c, _ in placed if _under(c, m)} <= inside]
        whole = [m for m in whole if not any(o != m and _under(m, o) for o in whole)]
        nearest = ".".join(os_common([m.split(".") for m in whole])) if whole else ""
        while nearest and nearest not in self.canon.modules:
            nearest = nearest.rsplit(".", 1)[0] if "." in nearest else ""
        name = type(module).__name__
        if not whole:
            return (f"{name}: the table maps none of its parameters (a copy tied to a mapped tensor, or a part the "
                    f"canonical model computes without a module)")
        if whole == [nearest]:
            return (f"{name} holds {nearest} (compared through the module the table pairs with it) and computes "
                    f"more on its output: no canonical module has the same output")
        besides = sorted({m for m in self.canon.modules if m and m in self.canon.params and _under(m, nearest)
                          and m not in whole and not any(_under(m, o) or _under(o, m) for o in whole)
                          and "." not in m[len(nearest) + 1 if nearest else 0:]})
        where = f"the nearest canonical module, {nearest}," if nearest else "only the whole model"
        if not besides:
            return (f"{name} holds {_short(whole)}, every canonical module with parameters, but is not the whole "
                    f"model (whose outputs are compared): compared through its parts")
        return (f"{name} holds {_short(whole)}; {where} also holds {_short(besides)}: no canonical module holds "
                f"exactly these, so it is compared through its parts")

    def _data_flow(self, c: Call, produced: dict, found: dict, run: Run, seen: set) -> list[Pair]:
        fw, canon = self.fw, self.canon
        module = self.tree.get(c.path)
        if c.path in seen or module is None or not c.path:
            return []
        if fw.owns_parameters(module):
            seen.add(c.path)
            if c.path not in self.by_path:
                if c.path not in self.why:  # structure only: worked out once per model, not per forward
                    self.why[c.path] = self._why_no_container(c.path, module)
                run.notes.append(Note(c.path, "container", self.why[c.path]))
            return []
        if c.passes_input:
            seen.add(c.path)
            run.notes.append(Note(c.path, "unpaired", f"{type(module).__name__} passes its input through unchanged "
                                                      f"here (nothing to compare)"))
            return []
        source = produced.get(id(c.data))
        if source is None and c.data is not None:
            source = self._by_value(c.data, found, canon.names[-1]) if found else None
        candidates = []
        if source is not None:
            ref_in = canon.values.get(source)
            candidates = [m for m in canon.modules if m and m not in canon.params and m in canon.output_of
                          and canon.output_of[m] != source and m in canon.first_input and ref_in is not None
                          and canon.first_input[m].shape == ref_in.shape
                          and np.array_equal(canon.first_input[m], ref_in)]
        if len(candidates) == 1:
            key = canon.output_of[candidates[0]]
            return [Pair(c.path, candidates[0], key, "data flow",
                         says=f"parameter-free, takes {source}: the reference's {candidates[0]} does")]
        seen.add(c.path)
        why = (f"takes {source}, which {len(candidates)} canonical modules take ({_short(candidates)})" if candidates
               else f"takes {source}, and no parameter-free canonical module with a traced output does" if source
               else "its input is no compared module's output")
        run.notes.append(Note(c.path, "unpaired", f"{type(module).__name__}, parameter-free: no canonical counterpart "
                                                  f"({why})"))
        return []

    def inside(self, name: str) -> str | None:
        """The external module (path and class) inside which canonical trace name `name` is computed: the
        pair of its deepest canonical ancestor; None where no ancestor is paired."""
        parts = name.split(".")[:-1]
        paired = {p.canonical: p.external for p in self.pairs}
        for i in range(len(parts), 0, -1):
            module = ".".join(parts[:i])
            if module in paired:
                return f"{paired[module]} ({type(self.tree[paired[module]]).__name__})"
        return None

    # ---- replay
    def input_of(self, run: Run, name: str) -> str | None:
        """The trace name of the data input of the (innermost) module call whose output is `name`."""
        return next((source for source in run.inputs.get(name, ()) if source is not None), None)

    def op_input(self, run: Run, name: str):
        """(canonical module, its recorded data input as NumPy) of the innermost call whose output is `name`
        and that stands for a canonical module (not a fused activation), or None."""
        for c, p in zip(run.calls.get(name, ()), run.pairs.get(name, ())):
            if p.how != "fused activation" and p.part is None and c.data is not None:
                return p.canonical, np.asarray(self.fw.to_numpy(c.data))
        return None

    def replay(self, run: Run, name: str, data: np.ndarray, module: str | None = None) -> np.ndarray:
        """The module whose output is trace name `name`, run again on its recorded call with its data
        input (every argument that was that tensor) replaced by `data`: another model's value at
        `input_of(run, name)`, or (`module`: the canonical module) that model's recorded input of it."""
        if module is not None:
            c = next(c for c, p in zip(run.calls[name], run.pairs[name]) if p.canonical == module)
        else:
            c = next(c for c, source in zip(run.calls[name], run.inputs[name]) if source == self.input_of(run, name))
        self.replayed = c.path
        x = self.fw.like(np.asarray(data).reshape(tuple(c.data.shape)), c.data)
        args = tuple(x if a is c.data else a for a in c.args)
        kwargs = {k: x if v is c.data else v for k, v in c.kwargs.items()}
        out = first_tensor(self.fw.call_module(self.tree[c.path], args, kwargs), self.fw.is_tensor)
        original = next((old for old, new in self.renamed.items() if new == name), name)
        pair = next((p for p in self.by_path.get(c.path, ()) if p.name in (name, original)),
                    Pair(c.path, "", name, "data flow"))
        return self._canonical_array(pair, out)


def _floating(x) -> bool:
    dtype = str(getattr(x, "dtype", ""))
    return "float" in dtype


def _short(items, n=3) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
