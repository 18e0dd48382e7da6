"""`tmirror report PRESET --stream`: a model larger than memory, checked one layer at a time.

The whole-model report builds the whole model in every framework: about 12 bytes a parameter
for the float64 reference and its float32 weights, so a 24 GiB machine stops near GPT-2 XL. A
streamed run takes the model apart as its family declares (`conformance.spec.family.Stack`) and
holds one part at a time: memory is bounded by about one layer, time is linear in depth.

    embeddings   the family's embeddings, on a model of no layers whose token table is the rows
                 the inputs look up (`Source.rows`): B T rows of a 128k-row table
    layer i      the model's own layer class, built once per framework and dtype and loaded with
                 layer i's weights (read from the `Source`, one tensor at a time), or built and
                 dropped for each layer when the budget cannot hold every framework's copy at once
    head         the model's `head` method on a model of no layers whose vocabulary is one chunk
                 of rows (a tied table) or columns (an untied head), chunk after chunk; the logits'
                 comparisons are put back together exactly (`tolerance.merge`)

Two comparisons per layer, both against the float64 reference:

    chained    each framework feeds its own previous output on, as the whole model does: the error
               it has accumulated by that depth, op by op (the same per-op numbers as the whole-model
               report: tests/test_stream.py checks them equal)
    replayed   each layer fed the reference's recorded input (`replay_layer`): the error that layer
               introduces on its own. Given the recorded boundary activations the layers are
               independent, so these jobs fan out over worker processes or a cluster
               (`conformance.report.fanout`)

Every finished part is written at once under `<out>/.stream/<run>/` (a temp file renamed into
place); a rerun with the same arguments reads those and does only what is left. The record says,
per layer and framework: both errors, the first op out of tolerance, load and forward seconds,
each allocator's peak and the resident-set peak.
"""
from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from conformance.backends import Built, backend
from conformance.backends.dtypes import numpy_dtype, parameter_dtype
from conformance.compare.divergence import compare_traces
from conformance.compare.tolerance import TOLERANCES, Comparison, compare, merge
from conformance.core import files
from conformance.core.config import Config
from conformance.costs import memory
from conformance.costs.measure import ResidentPeak, available_bytes, rss
from conformance.spec import families, registry
from conformance.spec.family import Stack
from conformance.weights.stream import Source

GiB = float(1 << 30)
REFERENCE = ("numpy", "float64")
STATE = ".stream"  # under --out: one directory per run, named by what it depends on


# ------------------------------------------------------------------------------ memory

def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


_LIBC = _libc()


def hand_back() -> None:
    """Free what nothing reaches, and hand the C heap's free pages back to the OS (glibc's malloc_trim):
    arrays under glibc's mmap threshold (32 MiB: a layer's smaller kernels) are freed into the heap,
    which otherwise keeps them resident, and the resident set creeps up layer after layer."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def machine_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_budget() -> int:
    """Most of this machine's memory: 80% of it, or of what is free now if that is less (a shared machine)."""
    return int(0.8 * min(machine_bytes(), rss() + available_bytes()))


def parse_bytes(text: str) -> int:
    """'12GiB', '500MiB', '8G', '1.5e9' -> bytes."""
    units = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30,
             "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
    t = text.strip().lower()
    number = t.rstrip("kmgtib")
    try:
        value = float(number) * units[t[len(number):]]
    except (ValueError, KeyError):
        raise ValueError(f"--memory-budget must be a size such as 12GiB, 500MiB or 8e9; received {text!r}") from None
    if not value > 0:
        raise ValueError(f"--memory-budget must be positive; received {text!r}")
    return int(value)


def fingerprint(source: Source) -> str:
    """A short hash of where the weights come from (a streamed run never holds them all to hash their bytes)."""
    return "source " + hashlib.sha256(json.dumps(source.identity(), sort_keys=True).encode()).hexdigest()[:16]


def _itemsize(dtype: str) -> int:
    return numpy_dtype(parameter_dtype(dtype)).itemsize


# ------------------------------------------------------------------------------ the plan

def stack_of(cfg: Config) -> Stack:
    """The family's `Stack`, or a ValueError naming the families that have one."""
    family = families.FAMILIES.get(cfg.kind)
    if family is None or family.stack is None:
        have = [f.name for f in families.FAMILIES.values() if f.stack is not None]
        raise ValueError(f"a streamed run takes a model family that declares its Stack {have}; "
                         f"received kind={cfg.kind!r}")
    if cfg.num_layer_groups is not None and cfg.num_layer_groups != cfg.num_layers:
        raise ValueError(f"a streamed run loads each layer's own weights, and ALBERT's layers share them: "
                         f"num_layer_groups must be None or num_layers={cfg.num_layers}; received "
                         f"num_layer_groups={cfg.num_layer_groups}")
    return family.stack


def estimate(cfg: Config, runs: list, batch: int, seq_len: int) -> dict:
    """Bytes a run needs, from the config alone: the whole-model path (canonical float32 weights and the
    float64 reference at once, then one framework at a time) and a streamed one, keeping every framework's
    copy of a layer (`keep`) or one framework's at a time (`drop`), each with one canonical tensor in flight
    and its float64 copy; a head chunk holds no more than a layer."""
    stack, shapes = stack_of(cfg), registry.param_shapes(cfg)
    model = registry.get(cfg.kind).reference(cfg)
    everyone = [REFERENCE, *[r for r in runs if r != REFERENCE]]
    layers = [[n for n in shapes if n.startswith(f"{stack.layers}.{i}.")] for i in range(cfg.num_layers)]
    params = [sum(int(np.prod(shapes[n])) for n in names) for names in layers] or [0]
    largest = max((int(np.prod(shapes[n])) for names in layers for n in names), default=0)
    peak = params.index(max(params))
    layer = dict(model.named_modules()).get(f"{stack.layers}.{peak}")
    x = (batch, seq_len, cfg.d_model)
    acts = max((layer.peak(_itemsize(d), memory.LIVE[f if f in memory.LIVE else "numpy"], x) if layer else 0)
               for f, d in everyone)
    copies = {f"{f} {d}": _itemsize(d) * max(params) for f, d in everyone}
    total = sum(int(np.prod(s)) for s in shapes.values())
    return {"parameters": total, "layer_parameters": max(params), "largest_tensor": largest,
            "layer_bytes": copies, "activations": int(acts),
            "keep": sum(copies.values()) + (4 + 8) * largest + int(acts),
            "drop": max(copies.values()) + (4 + 8) * largest + int(acts),
            "whole": 4 * total + max(_itemsize(d) for _, d in everyone) * total + int(acts) * cfg.num_layers}


@dataclass
class Plan:
    """What a streamed run will do, settled before it starts."""
    preset: str
    name: str                   # the report's file stem
    cfg: Config
    source: Source
    inputs: dict
    runs: list                  # (framework, dtype) pairs checked against the reference
    budget: int
    keep: bool                  # every framework's module kept from layer to layer
    chunk: int                  # vocabulary rows per head chunk
    state: Path
    estimate: dict
    baseline: int               # resident bytes before the run (interpreter and libraries)
    stack: Stack = field(repr=False, default=None)

    @property
    def labels(self) -> list[str]:
        return [f"{f} {d}" for f, d in self.runs]


def head_names(cfg: Config, stack: Stack) -> list[str]:
    """The canonical tensors the head reads: a zero-layer model's own, outside its embeddings, and
    `Stack.head_reads` (a tied table)."""
    return [n for n in registry.param_shapes(cfg.without_layers()) if not n.startswith(stack.embeddings + ".")] \
        + list(stack.head_reads(cfg))


def plan(preset: str, cfg: Config, source: Source, inputs: dict, runs: list, out_dir, budget: int | None = None,
         name: str | None = None) -> Plan:
    """Check the budget and the source, pick the keep/drop policy and the head chunk. Raises a ValueError
    naming the minimum when the budget is below one layer."""
    stack = stack_of(cfg)
    source.check()
    batch, seq_len = next(iter(inputs.values())).shape[:2]
    est = estimate(cfg, runs, batch, seq_len)
    for framework, _ in [REFERENCE, *runs]:
        backend(framework)  # imported now: the libraries are the baseline, not the run's own memory
    gc.collect()
    baseline = rss()
    budget = default_budget() if budget is None else budget
    if baseline + est["drop"] > budget:
        raise ValueError(f"--memory-budget {budget / GiB:.2f} GiB is below one layer of {preset}: a streamed run needs "
                         f"at least {(baseline + est['drop']) / GiB:.2f} GiB ({est['drop'] / GiB:.2f} GiB for the largest "
                         f"layer in {max(est['layer_bytes'], key=est['layer_bytes'].get)} and one tensor in flight, "
                         f"{baseline / GiB:.2f} GiB of libraries already resident)")
    keep = baseline + est["keep"] <= budget
    head = head_names(cfg, stack)
    # a chunk's model holds every vocabulary tensor at the chunk's rows (an untied model's token table too,
    # built though the head never reads it), and weighs no more than a layer
    zero = registry.param_shapes(cfg.without_layers())
    per_row = sum(int(np.prod(shape)) // cfg.vocab_size for n, shape in zero.items() if n in stack.vocabulary)
    reads = any(n in stack.vocabulary for n in head)
    chunks = -(-cfg.vocab_size // max(1, est["layer_parameters"] // per_row)) if reads and per_row else 1
    chunk = -(-cfg.vocab_size // chunks)  # balanced: every chunk the same size but the last
    ident = {"preset": preset, "config": cfg.to_dict(), "weights": source.identity(), "runs": runs,
             "inputs": {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()[:16]
                        for k, v in inputs.items()}}  # not the chunk: only the head depends on it (head_file)
    key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]
    name = name or f"{preset}-stream"
    state = Path(out_dir) / STATE / f"{name}-{key}"
    state.mkdir(parents=True, exist_ok=True)
    _write(state / "plan.json", json.dumps(ident, indent=1, sort_keys=True, default=str))
    return Plan(preset, name, cfg, source, inputs, list(runs), budget, keep, chunk, state, est, baseline, stack)


# ------------------------------------------------------------------------------ state on disk

def _write(path: Path, text: str | None = None, arrays: dict | None = None) -> None:
    """A state file whole or not at all (`core.files.write`): `text`, or `arrays` as an .npz."""
    def savez(tmp: Path):
        with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to the temporary's name
            np.savez(f, **arrays)
    files.write(path, savez if arrays is not None else text, "streamed-run state file")


def head_file(p: Plan) -> Path:
    """The head's result: named by its chunk, the one thing it depends on that the other parts do not."""
    return p.state / f"head-{p.chunk}rows.json"


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _arrays(path: Path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _slot(label: str) -> str:
    return label.replace(" ", "-")


def _labelled(arrays: dict) -> dict:
    return {k.replace("-", " "): v for k, v in arrays.items()}


# ------------------------------------------------------------------------------ parts

def _cfg_only(cfg: Config) -> tuple:
    return (cfg,)  # a layer's constructor arguments before its options: the model's config


class Parts:
    """Each framework's module of the part at hand. With `keep`, a layer's module is built once per
    framework, dtype and layer options, and every later layer's weights are loaded into it; without,
    each is built for its layer and let go after (`release`)."""

    def __init__(self, keep: bool):
        self.keep, self.cache = keep, {}

    def _get(self, key, build):
        built = self.cache.get(key) or build()
        if self.keep:
            self.cache[key] = built
        return built

    def _layer_module(self, framework: str, dtype: str, cfg: Config, stack: Stack, i: int) -> Built:
        b, entry = backend(framework), registry.get(cfg.kind)
        options = stack.layer_options(cfg, i)
        key = ("layer", framework, dtype, json.dumps(options, sort_keys=True, default=str))
        layer = replace(entry, cls=stack.layer, args=_cfg_only)
        return self._get(key, lambda: Built(b, entry, cfg, b.construct_for_loading(layer, cfg, dtype, "cpu", **options),
                                            dtype, False))

    def layer(self, framework: str, dtype: str, cfg: Config, stack: Stack, i: int, weights) -> Built:
        """Layer i in one framework and dtype, loaded with `weights` (all of the layer's tensors)."""
        built = self._layer_module(framework, dtype, cfg, stack, i)
        backend(framework).load(built.module, weights, dtype)
        return built

    def layers(self, pairs: list, cfg: Config, stack: Stack, i: int, weights) -> dict:
        """Layer i in every (framework, dtype) of `pairs` at once (`keep`): each canonical tensor is read
        once and copied into every framework's module before the next is read, so beside the modules no
        more than one tensor (and its conversions) is in memory. {pair: (Built, seconds)}: each one's
        build (its first layer only) and load time; reading the tensors is no framework's."""
        built, seconds = {}, {}
        for pair in pairs:
            t0 = time.perf_counter()
            built[pair] = self._layer_module(*pair, cfg, stack, i)
            seconds[pair] = time.perf_counter() - t0
        for name in weights:
            tensor = {name: weights[name]}
            for framework, dtype in pairs:
                t0 = time.perf_counter()
                backend(framework).load(built[(framework, dtype)].module, tensor, dtype, partial=True)
                seconds[(framework, dtype)] += time.perf_counter() - t0
            del tensor
        return {pair: (built[pair], seconds[pair]) for pair in pairs}

    def model(self, framework: str, dtype: str, cfg: Config, weights) -> Built:
        """The family's model for `cfg` (no layers, a part of the vocabulary), loaded with `weights` only."""
        b, entry = backend(framework), registry.get(cfg.kind)
        key = ("model", framework, dtype, cfg)
        stale = [k for k in self.cache if k[:3] == key[:3] and k != key]  # the head's last, shorter chunk
        for k in stale:
            del self.cache[k]
        if stale:
            hand_back()  # let the other chunk's model go before this one is built: one at a time
        built = self._get(key, lambda: Built(b, entry, cfg, b.construct_for_loading(entry, cfg, dtype, "cpu"), dtype, False))
        b.load(built.module, weights, dtype, partial=True)
        return built

    def release(self):
        """After a part's module is let go: without `keep`, its memory is handed back before the next is built."""
        if not self.keep:
            hand_back()

    def clear(self):
        self.cache.clear()
        hand_back()


def _measured(framework: str, fn):
    """(value, seconds, allocator peaks) of fn() in `framework`."""
    with backend(framework).tracking_allocator() as peaks:
        t0 = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - t0
    return value, seconds, dict(peaks)


def _ops(comparisons) -> list:
    return [[c.name, c.max_abs, c.max_rel, c.passed] for c in comparisons]


def _prefixed(records: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in records.items()}


def _run_part(parts: Parts, framework: str, make, call, plain=None) -> tuple:
    """Build and load with `make()`, run `call(built)`: (its result, {load, forward} seconds, allocator peaks).
    `plain(built)`: the same call untraced and unwatched by any allocator record, timed once more
    (`forward_plain`: what the cost model sets against the FLOP bound). The module is let go before this
    returns (kept only in `parts`' cache, under `keep`)."""
    built, load_seconds, load_peaks = _measured(framework, make)
    result, forward_seconds, run_peaks = _measured(framework, lambda: call(built))
    seconds = {"load": load_seconds, "forward": forward_seconds}
    if plain is not None:
        t0 = time.perf_counter()
        plain(built)
        seconds["forward_plain"] = time.perf_counter() - t0
    del built
    parts.release()
    peaks = {k: max(load_peaks.get(k, 0), v) for k, v in run_peaks.items()}
    return result, seconds, peaks


# ------------------------------------------------------------------------------ stages

def embeddings_stage(p: Plan, parts: Parts) -> tuple[dict, dict]:
    """The embeddings of every framework on the inputs: (result, {label: h0}); the lookup reads only the
    table rows the inputs use, renumbered into a table of that many rows."""
    cfg, stack, inputs = p.cfg, p.stack, dict(p.inputs)
    weights = {n: p.source.tensor(n) for n in p.source.names(stack.embeddings + ".") if n not in stack.rows}
    rows = None
    for table, key in stack.rows.items():
        rows = np.unique(inputs[key])
        if cfg.pad_positions:  # RoBERTa counts positions from the ids, from its pad id on: every id up to
            rows = np.union1d(rows, np.arange(cfg.pad_token_id + 1))  # the pad's kept, so it keeps its number
        weights[table] = p.source.rows(table, rows)
        inputs[key] = np.searchsorted(rows, inputs[key])
    part_cfg = cfg.without_layers(vocab_size=len(rows) if rows is not None else cfg.vocab_size)
    args, kwargs = stack.embedding_call(inputs)
    return _stage(p, parts, lambda f, d: parts.model(f, d, part_cfg, weights),
                  lambda built, h: built.trace_call(args, kwargs, path=stack.embeddings), {}, "")


def layer_stage(p: Plan, parts: Parts, i: int, h: dict) -> tuple[dict, dict]:
    """Layer i of every framework, each fed its own previous output: (result, {label: output})."""
    prefix = f"{p.stack.layers}.{i}."
    weights = p.source.mapping(p.source.names(prefix), prefix)
    kwargs = p.stack.layer_call(p.inputs)
    traced, plain = (lambda built, x: built.trace_call((x,), kwargs)), (lambda built, x: built.replay("", [x], kwargs))
    if p.keep:  # every framework's module is kept: all of them loaded together, a tensor at a time
        return _stage(p, parts, None, traced, h, prefix,
                      lambda: parts.layers([REFERENCE, *p.runs], p.cfg, p.stack, i, weights), plain)
    return _stage(p, parts, lambda f, d: parts.layer(f, d, p.cfg, p.stack, i, weights), traced, h, prefix,
                  plain=plain)


def _stage(p: Plan, parts: Parts, make, call, h: dict, prefix: str, load_all=None, plain=None) -> tuple[dict, dict]:
    """Each framework's part built and loaded by `make(framework, dtype)`, or all at once by `load_all()`
    ({pair: (Built, load seconds)}, `Parts.layers`), then run by `call(built, its input)` (and timed
    untraced by `plain(built, its input)`, `_run_part`)."""
    result = {"ops": {}, "chained": {}, "seconds": {}, "allocator": {}}
    outputs = {}
    hand_back()  # the last stage's garbage is not this one's peak
    with ResidentPeak() as peak:
        t0 = time.perf_counter()
        loaded = load_all() if load_all is not None else None

        def part(framework, dtype, x):
            untraced = None if plain is None else (lambda b: plain(b, x))
            if loaded is None:
                return _run_part(parts, framework, lambda: make(framework, dtype), lambda b: call(b, x), untraced)
            built, load_seconds = loaded[(framework, dtype)]
            out, seconds, peaks = _run_part(parts, framework, lambda: built, lambda b: call(b, x), untraced)
            return out, {**seconds, "load": load_seconds}, peaks

        (out, ref_records), seconds, peaks = part(*REFERENCE, h.get("reference"))
        ref_records = _prefixed(ref_records, prefix)
        outputs["reference"] = out
        result["seconds"]["reference"], result["allocator"]["reference"] = seconds, peaks
        for (framework, dtype), label in zip(p.runs, p.labels):
            (out, records), seconds, peaks = part(framework, dtype, h.get(label))
            ops = compare_traces(ref_records, _prefixed(records, prefix), dtype)
            output = compare(f"{prefix}output", out, outputs["reference"], TOLERANCES[dtype])
            first = next((c.name for c in ops if not c.passed), None)
            result["ops"][label] = _ops(ops)
            result["chained"][label] = {"max_abs": max((c.max_abs for c in ops), default=0.0),
                                        "output_max_abs": output.max_abs, "output_max_rel": output.max_rel,
                                        "passed": first is None, "first_op": first}
            result["seconds"][label], result["allocator"][label] = seconds, peaks
            outputs[label] = out
        result["wall"] = time.perf_counter() - t0
    result["rss_start"], result["rss_peak"] = peak.start or 0, peak.peak or 0  # 0: not Linux
    return result, outputs


def head_stage(p: Plan, parts: Parts, h: dict) -> dict:
    """The head of every framework, chained (its own last hidden state) and replayed (the reference's),
    chunk by chunk of the vocabulary; the `logits` names compared in pieces and merged."""
    cfg, stack = p.cfg, p.stack
    names = head_names(cfg, stack)
    chunked = {n: stack.vocabulary[n] for n in names if n in stack.vocabulary}
    fixed = {n: p.source.tensor(n) for n in names if n not in chunked}
    V = cfg.vocab_size
    bounds = [(a, min(a + p.chunk, V)) for a in range(0, V, p.chunk)] if chunked else [(0, V)]
    ops: dict = {}         # label -> name -> [Comparison per chunk]
    outs: dict = {}        # (mode, label) -> key -> [Comparison per chunk]
    first: dict = {}       # label -> {name: chunk 0's record} for what must not change from chunk to chunk
    seconds: dict = {}
    peaks: dict = {}
    with ResidentPeak() as peak:
        t0 = time.perf_counter()
        for a, b in bounds:
            weights = dict(fixed)
            weights.update({n: p.source.block(n, axis, a, b) for n, axis in chunked.items()})
            part_cfg = cfg.without_layers(vocab_size=(b - a) if chunked else 1)
            ref = {}
            for (framework, dtype), label in [(REFERENCE, "reference"), *zip(p.runs, p.labels)]:
                def both(bt, label=label):  # chained: its own last hidden state; replayed: the reference's
                    out, records = bt.trace_call((h[label],), method="head")
                    return out, records, bt.trace_call((h["reference"],), method="head")[0] if label != "reference" \
                        else None

                (out, records, replayed), s, pk = _run_part(
                    parts, framework, lambda: parts.model(framework, dtype, part_cfg, weights), both)
                seconds.setdefault(label, {"load": 0.0, "forward": 0.0})
                for k in s:
                    seconds[label][k] += s[k]
                peaks[label] = {k: max(peaks.get(label, {}).get(k, 0), v) for k, v in pk.items()}
                if label == "reference":
                    ref = {"records": records, "out": out}
                    continue
                tol = TOLERANCES[dtype]
                for name, r in ref["records"].items():
                    if name not in stack.logits:
                        _same_in_every_chunk(first, label, name, records[name])
                    ops.setdefault(label, {}).setdefault(name, []).append(compare(name, records[name], r, tol))
                for mode, got in (("chained", out), ("replayed", replayed)):
                    for key, r in ref["out"].items():
                        if key not in stack.logits:
                            _same_in_every_chunk(first, (mode, label), key, got[key])
                        outs.setdefault((mode, label), {}).setdefault(key, []).append(
                            compare(f"{framework}.{key}", got[key], r, tol))
        wall = time.perf_counter() - t0
    offsets = [a for a, _ in bounds]

    def put_together(name, pieces, dtype, key=None):
        return merge(name, pieces, TOLERANCES[dtype], offsets) if (key or name) in stack.logits else pieces[0]

    result = {"ops": {}, "outputs": {}, "chained": {}, "replayed": {}, "chunks": len(bounds), "chunk_rows": p.chunk,
              "seconds": seconds, "allocator": peaks, "wall": wall,
              "rss_start": peak.start or 0, "rss_peak": peak.peak or 0}  # 0: not Linux
    for (framework, dtype), label in zip(p.runs, p.labels):
        merged = [put_together(n, pieces, dtype) for n, pieces in ops.get(label, {}).items()]  # none: no pooler
        result["ops"][label] = _ops(merged)
        for mode in ("chained", "replayed"):
            comparisons = [put_together(pieces[0].name, pieces, dtype, key)
                           for key, pieces in outs[(mode, label)].items()]
            result[mode][label] = {"outputs": {c.name.split(".", 1)[1]: [c.max_abs, c.max_rel, c.passed]
                                               for c in sorted(comparisons, key=lambda c: c.name)},
                                   "passed": all(c.passed for c in comparisons)}
        result["outputs"][label] = result["chained"][label]["outputs"]
    return result


def _same_in_every_chunk(first: dict, label, name, value) -> None:
    """A head tensor without the vocabulary axis must come out the same from every chunk."""
    held = first.setdefault(label, {})
    if name not in held:
        held[name] = value
    elif not np.array_equal(held[name], value):
        raise ValueError(f"{label}: head tensor {name} differs between vocabulary chunks: only the Stack's "
                         f"`logits` may depend on the chunk")


# ------------------------------------------------------------------------------ replay jobs

_WORKER_PARTS: dict = {}  # one Parts per process: a worker keeps its modules from job to job


def replay_job(p: Plan, i: int, h_in: np.ndarray, h_out: np.ndarray) -> dict:
    """Everything a replay of layer i needs, picklable: sent to a worker as it is."""
    return {"cfg": p.cfg.to_dict(), "source": p.source, "layer": i, "runs": p.runs, "keep": p.keep,
            "kwargs": p.stack.layer_call(p.inputs), "h_in": h_in, "h_out": h_out}


def replay_layer(job: dict) -> dict:
    """Layer i of every framework fed the reference's recorded input, its output against the reference's:
    the error that layer introduces. Runs wherever it is sent (this process, a worker, a cluster)."""
    cfg, i, source = Config.from_dict(job["cfg"]), job["layer"], job["source"]
    stack = stack_of(cfg)
    parts = _WORKER_PARTS.setdefault(job["keep"], Parts(job["keep"]))
    prefix = f"{stack.layers}.{i}."
    weights = source.mapping(source.names(prefix), prefix)
    result = {"layer": i, "replayed": {}, "seconds": {}, "allocator": {}, "pid": os.getpid(),
              "host": os.uname().nodename}
    hand_back()
    with ResidentPeak() as peak:
        t0 = time.perf_counter()
        loaded = parts.layers(job["runs"], cfg, stack, i, weights) if job["keep"] else {}
        for framework, dtype in job["runs"]:
            label = f"{framework} {dtype}"
            built, load_seconds = loaded.get((framework, dtype), (None, None))
            make = (lambda: built) if built is not None else lambda: parts.layer(framework, dtype, cfg, stack, i, weights)
            out, seconds, peaks = _run_part(parts, framework, make,
                                            lambda b: b.replay("", [job["h_in"]], job["kwargs"]))
            if load_seconds is not None:
                seconds["load"] = load_seconds
            c = compare(f"{prefix}output", out, job["h_out"], TOLERANCES[dtype])
            result["replayed"][label] = {"max_abs": c.max_abs, "max_rel": c.max_rel, "passed": c.passed}
            result["seconds"][label], result["allocator"][label] = seconds, peaks
        result["wall"] = time.perf_counter() - t0
    result["rss_start"], result["rss_peak"] = peak.start or 0, peak.peak or 0  # 0: not Linux
    return result


# ------------------------------------------------------------------------------ the run

def run(p: Plan, workers: int | None = None, cluster: str | None = None, progress=None) -> dict:
    """Embeddings, the chain of layers, the replay jobs (fanned out), the head: the `stream` section of
    the record. Every part found finished under `p.state` is read back instead of run again."""
    from conformance.report import fanout
    say = progress or (lambda label: None)
    state, L = p.state, p.cfg.num_layers
    parts = _WORKER_PARTS.setdefault(p.keep, Parts(p.keep))  # this process's: replay in-process reuses them
    wall = {}
    resumed = []
    say("embeddings")
    embeddings = _read(state / "embeddings.json")
    if embeddings is None:
        embeddings, h = embeddings_stage(p, parts)
        _write(state / "embeddings.npz", arrays={_slot(k): v for k, v in h.items()})
        _write(state / "embeddings.json", json.dumps(embeddings, default=float))
    else:
        h = _labelled(_arrays(state / "embeddings.npz"))
        resumed.append("embeddings")
    boundary = [h["reference"]]
    layers = []
    wall["embeddings"] = embeddings["wall"]
    for i in range(L):
        say(f"layer {i + 1}/{L} chained")
        name = state / f"chain-{i:05d}"
        result = _read(name.with_suffix(".json"))
        if result is None:
            result, h = layer_stage(p, parts, i, h)
            _write(name.with_suffix(".npz"), arrays={_slot(k): v for k, v in h.items()})
            _write(name.with_suffix(".json"), json.dumps(result, default=float))
        else:
            h = _labelled(_arrays(name.with_suffix(".npz")))
            resumed.append(f"layer {i} chained")
        boundary.append(h["reference"])
        layers.append(result)
    wall["chain"] = sum(r["wall"] for r in layers)  # each layer's own time, also when read back
    if workers is not None or cluster is not None:
        parts.clear()  # the workers build their own
    todo = [i for i in range(L) if not (state / f"replay-{i:05d}.json").is_file()]
    resumed += [f"layer {i} replayed" for i in range(L) if i not in todo]
    fan = {"workers": workers, "cluster": cluster, "jobs": len(todo)}
    with fanout.executor(workers, cluster) as client:
        fan["warm_up"] = fanout.warm(client, [REFERENCE[0], *[f for f, _ in p.runs]])
        t0 = time.perf_counter()
        jobs = [replay_job(p, i, boundary[i], boundary[i + 1]) for i in todo]
        for done, result in enumerate(fanout.map_jobs(client, replay_layer, jobs)):
            _write(state / f"replay-{result['layer']:05d}.json", json.dumps(result, default=float))
            say(f"layer {done + 1}/{len(todo)} replayed")
        wall["replay"] = fan["replay_seconds"] = time.perf_counter() - t0
    replays = [_read(state / f"replay-{i:05d}.json") for i in range(L)]
    if todo != list(range(L)):  # some jobs ran before: their own time, not this run's
        wall["replay"] = sum(r["wall"] for r in replays)
    parts.clear()
    say("head")
    head = _read(head_file(p))
    if head is None:
        head = head_stage(p, parts, h)
        _write(head_file(p), json.dumps(head, default=float))
    else:
        resumed.append("head")
    parts.clear()
    wall["head"] = head["wall"]
    return section(p, embeddings, layers, replays, head, wall, fan, resumed)


def section(p: Plan, embeddings, layers, replays, head, wall, fan, resumed) -> dict:
    labels = p.labels
    rows = []
    for i, (chain, replay) in enumerate(zip(layers, replays)):
        rows.append({"layer": i, "chained": chain["chained"], "replayed": replay["replayed"],
                     "seconds": chain["seconds"], "replay_seconds": replay["seconds"], "allocator": chain["allocator"],
                     "replay_allocator": replay["allocator"], "wall": chain["wall"], "replay_wall": replay["wall"],
                     "rss_peak": chain["rss_peak"], "replay_rss_peak": replay["rss_peak"],
                     "replay_worker": f"{replay['host']}:{replay['pid']}"})
    first = {mode: {label: next((r["layer"] for r in rows if not r[mode][label]["passed"]), None) for label in labels}
             for mode in ("chained", "replayed")}
    own = [r for r in (embeddings, *layers, head) if r.get("rss_peak")]
    peak = max(r["rss_peak"] for r in own)
    est = p.estimate
    bound = int(1.5 * sum(est["layer_bytes"].values()) + est["activations"])
    return {"preset": p.preset, "policy": "keep" if p.keep else "drop", "budget": p.budget, "baseline_rss": p.baseline,
            "estimate": est, "chunk_rows": head["chunk_rows"], "chunks": head["chunks"], "layers": rows,
            "embeddings": {k: embeddings[k] for k in ("chained", "seconds", "allocator", "wall", "rss_peak")},
            "head": {k: head[k] for k in ("chained", "replayed", "seconds", "allocator", "wall", "rss_peak", "chunks")},
            "first_layer_out_of_tolerance": first, "peak_rss": peak, "peak_over_baseline": peak - p.baseline,
            "memory_bound": bound, "replay_peak_rss": max(r["replay_rss_peak"] for r in rows) if rows else 0,
            "wall": {**wall, "total": sum(wall.values())}, "fanout": fan, "resumed": resumed}


def passed(sec: dict) -> bool:
    """Every layer's own error (replayed) within tolerance, and the head's outputs both ways. A chained
    layer out of tolerance is named, not failed, as the whole-model report names its first op out of
    tolerance and judges the outputs: float32's error grows with the residual stream it is carried on
    (llama3-8b's passes the elementwise float32 row at layer 9 while every layer alone is within it)."""
    return (all(all(r["replayed"][label]["passed"] for label in r["replayed"]) for r in sec["layers"])
            and all(v["passed"] for v in sec["head"]["chained"].values())
            and all(v["passed"] for v in sec["head"]["replayed"].values()))


def runs_of(p: Plan, embeddings_ops: dict, layers_ops: list, head: dict):
    """The whole-model report's `Run`s from a streamed run: every op in execution order, the head's outputs."""
    from conformance.report.runner import Run
    out = []
    for (framework, dtype), label in zip(p.runs, p.labels):
        ops = [Comparison(n, a, r, (), ok) for stage in (embeddings_ops, *layers_ops, head["ops"])
               for n, a, r, ok in stage[label]]
        outputs = [Comparison(f"{framework}.{k}", a, r, (), ok) for k, (a, r, ok) in head["outputs"][label].items()]
        out.append(Run(framework, dtype, {}, outputs, ops))
    return out


def runs(p: Plan) -> list:
    """The whole-model report's `Run`s, read back from the state directory: every op in execution order, the
    head's outputs, each framework's forward and load seconds summed over the parts."""
    state = p.state
    embeddings = _read(state / "embeddings.json")
    layers = [_read(state / f"chain-{i:05d}.json") for i in range(p.cfg.num_layers)]
    head = _read(head_file(p))
    out = runs_of(p, embeddings["ops"], [r["ops"] for r in layers], head)
    for r, label in zip(out, p.labels):
        r.seconds = sum(s["seconds"][label]["forward"] for s in (embeddings, *layers, head))
        r.build_seconds = sum(s["seconds"][label]["load"] for s in (embeddings, *layers, head))
    return out


# ------------------------------------------------------------------------------ cost model

def layer_flops(cfg: Config, batch: int, seq_len: int, i: int = 0) -> int:
    from conformance.costs import flops
    layer = dict(registry.get(cfg.kind).reference(cfg).named_modules())[f"{stack_of(cfg).layers}.{i}"]
    return flops.totals(list(layer.flops((batch, seq_len, cfg.d_model))))["all"]


def matmul_rates(runs: list, shape, repeats: int = 3) -> dict:
    """GFLOP/s of a matmul of `shape` (`Backend.matmul_gflops`) in each run's framework and compute dtype
    (float64 for the reference)."""
    return {("reference" if (f, d) == REFERENCE else f"{f} {d}"):
            backend(f).matmul_gflops(shape, repeats, "float64" if d == "float64" else "float32")
            for f, d in [REFERENCE, *runs]}


def layer_matmul(cfg: Config, batch: int, seq_len: int) -> tuple[int, int, int]:
    """(m, k, p) of a layer's widest matmul: its B T tokens through the feed-forward's first kernel."""
    return batch * seq_len, cfg.d_model, cfg.d_ff


def cost_model(sec: dict, cfg: Config, batch: int, seq_len: int, rates: dict, depth: int | None = None) -> dict:
    """Per-layer forward time against the FLOP bound at each framework's measured matmul rate; per-layer wall
    time, memory against the estimate, and the run projected to `depth` layers (linear in depth, memory flat)."""
    fl = layer_flops(cfg, batch, seq_len)
    layers = sec["layers"][1:] or sec["layers"]  # layer 0 pays first-call costs (module construction, caches)
    per = {}
    for label, rate in rates.items():
        forward = float(np.median([r["seconds"][label].get("forward_plain", r["seconds"][label]["forward"])
                                   for r in layers]))
        load = float(np.median([r["seconds"][label]["load"] for r in layers]))
        bound = fl / (rate * 1e9)
        per[label] = {"gflops_rate": rate, "flop_bound_seconds": bound, "forward_seconds": forward,
                      "forward_over_bound": forward / bound, "load_seconds": load}
    chain = float(np.median([r["wall"] for r in layers]))
    replay = float(np.median([r["replay_wall"] for r in layers]))
    depth = depth or cfg.num_layers
    fixed = sec["wall"]["embeddings"] + sec["wall"]["head"]
    check = None
    if len(sec["layers"]) > 4:  # the projection from a few layers, against this run's own depth
        few = sec["layers"][1:4]
        per_layer = float(np.median([r["wall"] for r in few]) + np.median([r["replay_wall"] for r in few]))
        measured = fixed + sum(r["wall"] + r["replay_wall"] for r in sec["layers"])
        check = {"from_layers": [r["layer"] for r in few], "layers": len(sec["layers"]),
                 "projected_seconds": fixed + len(sec["layers"]) * per_layer, "measured_seconds": measured}
    return {"layer_flops": fl, "matmul_shape": list(layer_matmul(cfg, batch, seq_len)), "per_framework": per, "layer_chain_seconds": chain, "layer_replay_seconds": replay,
            "layer_parameters": sec["estimate"]["layer_parameters"], "depth": depth,
            "projected_seconds": fixed + depth * (chain + replay),
            "projected_chain_seconds": fixed + depth * chain, "projected_replay_worker_seconds": depth * replay,
            "measured_seconds": sec["wall"]["total"], "estimated_peak": _estimated_peak(sec),
            "measured_peak": sec["peak_rss"], "projection_check": check}


def _estimated_peak(sec: dict) -> int:
    return sec["baseline_rss"] + sec["estimate"]["keep" if sec["policy"] == "keep" else "drop"]


def worker_hours(cost: dict, target: Config, stack_layers_params: int | None = None) -> dict:
    """A check of `target` at the same tokens from the measured figures: each layer's time scaled by its
    parameters (generating or reading, loading and running a layer are all linear in its parameters at a
    fixed number of tokens); the chain runs on one worker, the replay jobs on any number."""
    shapes = registry.param_shapes(target)
    layer = sum(int(np.prod(s)) for n, s in shapes.items() if n.startswith(f"{stack_of(target).layers}.0."))
    scale = layer / cost["layer_parameters"]
    chain = target.num_layers * cost["layer_chain_seconds"] * scale
    replay = target.num_layers * cost["layer_replay_seconds"] * scale
    return {"layers": target.num_layers, "layer_parameters": layer, "scale": scale,
            "chain_hours": chain / 3600, "replay_worker_hours": replay / 3600, "worker_hours": (chain + replay) / 3600}


# ------------------------------------------------------------------------------ Markdown

def markdown(sec: dict) -> str:
    labels = list(sec["layers"][0]["chained"]) if sec["layers"] else []
    g = lambda b: f"{b / GiB:.2f}"  # noqa: E731
    est = sec["estimate"]
    fan = sec["fanout"]
    where = (f"{fan['workers']} local worker processes" if fan["workers"] else
             f"the cluster at {fan['cluster']}" if fan["cluster"] else "this process")
    lines = ["## Streamed run: one layer at a time", "",
             f"Policy **{sec['policy']}** (each framework's layer module "
             + ("kept and reloaded layer after layer" if sec["policy"] == "keep"
                else "built and dropped for every layer")
             + f"), memory budget {g(sec['budget'])} GiB; the head in {sec['chunks']} chunk(s) of "
             f"{sec['chunk_rows']:,} vocabulary rows. Resident before the run (interpreter, libraries): "
             f"{g(sec['baseline_rss'])} GiB.", "",
             "| measure | GiB |", "|---|---|",
             f"| peak resident set of the run | {g(sec['peak_rss'])} |",
             f"| ... over the resident set before it | {g(sec['peak_over_baseline'])} |",
             f"| peak resident set of a replay job ({where}) | {g(sec['replay_peak_rss'])} |",
             f"| estimated need ({sec['policy']}, over the baseline) | {g(est[sec['policy']])} |",
             f"| bound: 1.5 x one layer in every framework + activations | {g(sec['memory_bound'])} |",
             f"| whole-model estimate | {g(est['whole'])} |", "",
             "Largest layer's weights: " + ", ".join(f"{k} {g(v)} GiB" for k, v in est["layer_bytes"].items())
             + f" ({est['layer_parameters']:,} parameters).", "",
             "### First layer out of tolerance", "",
             "| framework | chained (own inputs: accumulated error) | replayed (the reference's inputs: introduced) |",
             "|---|---|---|"]
    first = sec["first_layer_out_of_tolerance"]
    lines += [f"| {label} | {_layer_name(first['chained'][label])} | {_layer_name(first['replayed'][label])} |"
              for label in labels]
    lines += ["", "### Per layer", "",
              "Chained: the largest error over the layer's ops (and at its output) with each framework fed its own "
              "previous output. Replayed: the layer's output fed the reference's recorded input. Seconds: "
              "load (build or reuse, and load the weights) + forward, chained pass; resident-set peak of the "
              "chained pass.", "",
              "| layer | " + " | ".join(f"{label} chained (output) | {label} replayed" for label in labels)
              + " | " + " | ".join(f"{label} s" for label in ["reference", *labels])
              + " | wall s | replay s | RSS GiB |",
              "|" + "---|" * (1 + 2 * len(labels) + len(labels) + 1 + 3)]
    for r in sec["layers"]:
        cells = []
        for label in labels:
            c, rp = r["chained"][label], r["replayed"][label]
            cells += [f"{c['max_abs']:.2e} ({c['output_max_abs']:.2e}){'' if c['passed'] else ' FAIL'}",
                      f"{rp['max_abs']:.2e}{'' if rp['passed'] else ' FAIL'}"]
        secs = [f"{r['seconds'][label]['load']:.1f} + {r['seconds'][label]['forward']:.2f}"
                for label in ["reference", *labels]]
        lines.append(f"| {r['layer']} | " + " | ".join(cells + secs)
                     + f" | {r['wall']:.1f} | {r['replay_wall']:.1f} | {g(r['rss_peak'])} |")
    head = sec["head"]
    lines += ["", "### Head", "",
              "| framework | mode | " + " | ".join(next(iter(head["chained"].values()))["outputs"]) + " |",
              "|---|---|" + "---|" * len(next(iter(head["chained"].values()))["outputs"])]
    for label in labels:
        for mode in ("chained", "replayed"):
            outs = head[mode][label]["outputs"]
            lines.append(f"| {label} | {mode} | " + " | ".join(
                f"{a:.2e}{'' if ok else ' FAIL'}" for a, _, ok in outs.values()) + " |")
    allocs = [(stage, label, k, v) for stage, s in (("embeddings", sec["embeddings"]), ("head", head))
              for label, peaks in s["allocator"].items() for k, v in peaks.items()]
    first_layer = sec["layers"][0]["allocator"] if sec["layers"] else {}
    allocs += [("largest layer", label, k, max(r["allocator"][label].get(k, 0) for r in sec["layers"]))
               for label in ["reference", *labels] for k in first_layer.get(label, {})]
    lines += ["", "### Allocator peaks", "",
              "Each framework's own allocator record over its part (NumPy: tracemalloc; torch: the CPU allocator's "
              "events in torch.profiler; TensorFlow keeps no CPU allocator statistics: its memory is in the resident "
              "set only).", "", "| part | framework | measure | GiB |", "|---|---|---|---|"]
    lines += [f"| {stage} | {label} | {k} | {g(v)} |" for stage, label, k, v in allocs]
    w = sec["wall"]
    lines += ["", "### Wall time", "",
              "| phase | seconds |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in w.items()]
    lines += ["", f"Replay jobs ({fan['jobs']} run by this invocation) on {where}." + _resumed(sec["resumed"])]
    if sec.get("cost_model"):
        lines += ["", cost_markdown(sec["cost_model"])]
    return "\n".join(lines)


def _resumed(resumed: list) -> str:
    if not resumed:
        return ""
    chained = sum(r.endswith(" chained") for r in resumed)
    replayed = sum(r.endswith(" replayed") for r in resumed)
    parts = (["the embeddings"] * ("embeddings" in resumed) + [f"{chained} chained layers"] * bool(chained)
             + [f"{replayed} replayed layers"] * bool(replayed) + ["the head"] * ("head" in resumed))
    return (f" Read back from an earlier run with the same arguments (their times are that run's): "
            f"{', '.join(parts)}.")


def _layer_name(i) -> str:
    return "none" if i is None else f"layer {i}"


def cost_markdown(cm: dict) -> str:
    lines = ["### Cost model", "",
             f"One layer: {cm['layer_flops'] / 1e9:.2f} GFLOP forward, {cm['layer_parameters']:,} parameters. Forward "
             "time (untraced, no allocator record) against the FLOP bound at each framework's matmul rate measured on "
             "the layer's widest matmul, ({} x {}) @ ({} x {}); medians over layers (layer 0 left out: it pays module "
             "construction):".format(*cm["matmul_shape"][:2], *cm["matmul_shape"][1:]), "",
             "| framework | matmul GFLOP/s | FLOP bound s | forward s | forward / bound | load s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {v['gflops_rate']:.1f} | {v['flop_bound_seconds']:.3f} | {v['forward_seconds']:.3f} | "
              f"{v['forward_over_bound']:.2f} | {v['load_seconds']:.2f} |" for k, v in cm["per_framework"].items()]
    lines += ["", f"A layer's wall time: {cm['layer_chain_seconds']:.1f} s chained, {cm['layer_replay_seconds']:.1f} s "
              f"replayed. Projected to {cm['depth']} layers (embeddings and head once, every layer chained and "
              f"replayed on one worker): {cm['projected_seconds'] / 60:.1f} min, of which "
              f"{cm['projected_chain_seconds'] / 60:.1f} min chained (one worker, in order) and "
              f"{cm['projected_replay_worker_seconds'] / 60:.1f} worker-minutes of replay (any number of workers); measured for this run: {cm['measured_seconds'] / 60:.1f} min. "
              f"Peak memory does not grow with depth: estimated {cm['estimated_peak'] / GiB:.2f} GiB, measured "
              f"{cm['measured_peak'] / GiB:.2f} GiB."]
    check = cm.get("projection_check")
    if check:
        ratio = check["measured_seconds"] / check["projected_seconds"]
        lines += ["", f"The projection checked on this run: from layers {check['from_layers']} alone, "
                  f"{check['layers']} layers were projected at {check['projected_seconds'] / 60:.1f} min of parts; "
                  f"they took {check['measured_seconds'] / 60:.1f} min ({ratio:.2f}x)."]
    for name, wh in cm.get("worker_hours", {}).items():
        lines.append(f"- {name}: {wh['layers']} layers of {wh['layer_parameters']:,} parameters "
                     f"({wh['scale']:.1f}x this run's): {wh['chain_hours']:.2f} h chained + {wh['replay_worker_hours']:.2f} worker-hours "
                     f"replayed = {wh['worker_hours']:.2f} worker-hours")
    return "\n".join(lines)
