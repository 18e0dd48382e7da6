"""`tmirror gpu-check` (also `scripts/gpu-check`): the GPU conformance run, one command, within a time budget.

    scripts/gpu-check --out reports                  # on a GPU machine: torch on cuda; 480 s at most
    scripts/gpu-check --device cpu --out /tmp/dry    # the CPU dry run: every part, small; about a minute

It writes `gpu-<device>.md` and `gpu-<device>.json` into `--out` (`<device>` is the GPU's name,
e.g. `nvidia-h200`, or `cpu`), the tolerance evidence of `tmirror tolerances --device cuda` beside
them (`tolerances-cuda.md`, `tolerance_evidence_cuda.json`), and prints one line: the verdict.

The parts, in priority order (the Keras subprocesses start first and run beside the next four):

| part | what it runs |
|---|---|
| matrix | every registry case, torch on the device, every GPU dtype, against the float64 CPU reference |
| tf32 | TF32 forced off (float32) and on (tf32) on matmul-heavy cases and a preset, TF32 named as the cause |
| presets | each family's `Family.base_preset`, reference and fused attention, every dtype, and against the cpu |
| tolerances | `tmirror tolerances --device cuda --frameworks torch`: every case in every regime, and the presets |
| keras | tf_impl under KERAS_BACKEND=jax and torch (tensorflow where installed), each on the device it picks; |
| | on the GPU a TF32-off twin of jax confirms TF32 as the cause of any float32 failure |
| timing | torch_impl's bert-base (and llama3.2-1b once declared) forward in bf16 against transformers' sdpa |

Every part runs in units (a case, a preset, a backend); before each unit the clock checks that the
part's deadline leaves room for it (the budget less the shares reserved for the parts after it), so
the run ends within `--budget-seconds` and records each unit it cut. A unit that raises is recorded
as a failed cell with its one-line error; the report is rewritten after every part, so a run stopped
from outside still leaves one. What is not installed is skipped with a line that says why: nothing
here imports TensorFlow (the GPU machine has none) unless `--frameworks tf` asks for it on the cpu,
and Keras runs only in subprocesses. Keras and the two of its requirements a torch+JAX machine
lacks (namex, optree) travel as wheels in `.whl/` (`scripts/gpu-wheels` fetches them); each wheel
whose distribution is not installed is installed with pip `--no-deps` into a temporary directory
that the Keras subprocesses find on PYTHONPATH, and Keras's requirements are checked first.
"""
from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from conformance import weights
from conformance.backends import build, environment as framework_environment, supports
from conformance.backends.base import as_dict
from conformance.backends.finite import traced
from conformance.compare import keras_backends
from conformance.compare.divergence import compare_traces
from conformance.compare.tf32 import tf32_cause
from conformance.compare.tolerance import TOLERANCES, compare_outputs
from conformance.oracles import transformers as transformers_oracle
from conformance.report import matrix
from conformance.spec import families, presets, registry
from conformance.spec.registry import CASES, case_id
from conformance.suites import measure
from conformance.suites.cases import case_data, check_case

ROOT = Path(__file__).resolve().parents[2]
GPU_DTYPES = ("float32", "tf32", "bfloat16", "float16", "mixed_bfloat16", "mixed_float16")
DRY_DTYPES = ("float32", "bfloat16")
KERAS_GPU_DTYPES = ("float32", "bfloat16", "float16", "mixed_bfloat16", "mixed_float16")
KERAS_BACKENDS = ("jax", "torch", "tensorflow")
# The dry run's sample of the registry: a component of each kind, the fused variants, every family
DRY_CASES = ("linear", "softmax[fully_masked]", "layer_norm", "scaled_dot_product_attention[fused]",
             "multi_head_attention", "multi_head_attention[fused]", "encoder_layer", "decoder_layer", "bert",
             "bert[fused]", "gpt2", "gpt2[fused]", "transformer")
TF32_CASES = ("multi_head_attention", "encoder_layer", "decoder_layer", "bert", "gpt2", "transformer")
TIMING_PRESETS = ("bert-base", "llama3.2-1b")  # the two; a preset not (yet) declared is a skip line
GPU_SHAPES = ((1, 128), (8, 512))  # (batch, tokens) of the timing table
DRY_SHAPES = ((1, 16),)
# part -> the share of the budget kept for it while earlier parts run (their deadline leaves it free)
# (serial order; the Keras subprocesses run beside matrix..tolerances, and "keras" is the wait for them)
RESERVE = {"matrix": 0.10, "tf32": 0.04, "presets": 0.20, "tolerances": 0.25, "keras": 0.05, "timing": 0.06}
WRITE_SECONDS = 3.0  # kept for writing the report at the end
KERAS_MAX_PARAMETERS = 200_000_000  # larger presets stay out of the Keras subprocesses (float32 weights on disk)
# a Keras backend's switch that turns TF32 off, for confirming that TF32 is why a float32 cell failed
TF32_OFF_ENV = {"jax": {"JAX_DEFAULT_MATMUL_PRECISION": "highest"}, "tensorflow": {"NVIDIA_TF32_OVERRIDE": "0"}}
TF32_ON_BY_DEFAULT = ("jax", "tensorflow")  # their float32 matmuls use TF32 on Ampere+ unless told not to


@dataclass
class Settings:
    device: str
    out: Path
    budget: float
    frameworks: tuple
    dtypes: tuple
    keras_backends: tuple
    keras_dtypes: tuple
    cases: list
    presets: list
    seq_len: int
    regimes: tuple
    timing_shapes: tuple
    timing_runs: int
    wheels: Path
    command: str
    dry_run: bool
    slug: str = ""


def settings(device="cuda", out="reports", budget=None, frameworks=("torch",), dtypes=None, keras=KERAS_BACKENDS,
             cases=None, wheels=None, command="tmirror gpu-check") -> Settings:
    """The run's settings, the defaults filled in by device; a ValueError (one line) for what cannot run."""
    try:
        import torch
    except ImportError:
        raise ValueError("torch is not installed: gpu-check runs torch_impl on the device") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device cuda: torch {torch.__version__} sees no CUDA device on this machine; "
                         "the CPU dry run is --device cpu")
    dry = device == "cpu"
    dtypes = tuple(dtypes or (DRY_DTYPES if dry else GPU_DTYPES))
    if cases is None and dry:
        chosen = [c for c in CASES if case_id(c) in DRY_CASES]
    else:
        chosen = [c for c in CASES if fnmatch.fnmatch(case_id(c), cases or "*")]
    if not chosen:
        raise ValueError(f"no registry case matches --cases {cases!r}; e.g. {[case_id(c) for c in CASES[:3]]}")
    return Settings(
        device=device, out=Path(out), budget=float(budget or (60 if dry else 480)), frameworks=tuple(frameworks),
        dtypes=dtypes, keras_backends=tuple(keras),
        keras_dtypes=tuple(d for d in (keras_backends.KERAS_DTYPES if dry else KERAS_GPU_DTYPES) if d in dtypes),
        cases=chosen, presets=[_smallest(f) if dry else f.base_preset for f in families.FAMILIES.values()
                               if f.base_preset is not None],
        seq_len=16 if dry else 128, regimes=tuple(measure.REGIMES), timing_shapes=DRY_SHAPES if dry else GPU_SHAPES,
        timing_runs=3 if dry else 20, wheels=Path(wheels) if wheels else ROOT / ".whl", command=command, dry_run=dry,
        slug="cpu" if dry else re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-"))


def _parameters(preset: str) -> int:
    return sum(int(np.prod(s)) for s in registry.param_shapes(presets.get(preset)).values())


def _smallest(family) -> str:
    """The family's preset with the fewest parameters: the dry run's stand-in for its base preset."""
    return min(family.presets, key=_parameters)


# ------------------------------------------------------------------------------------------ the clock

class Clock:
    """The budget: each part's deadline leaves the later parts their reserved share, and units that
    would run past it are cut and recorded."""

    def __init__(self, budget: float, started: float | None = None):
        self.budget, self.t0 = budget, started if started is not None else time.perf_counter()
        self.parts: dict[str, dict] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def deadline(self, part: str) -> float:
        """Seconds from the start by which `part` must be done."""
        names = list(RESERVE)
        later = sum(RESERVE[n] for n in names[names.index(part) + 1:])
        return self.budget * (1 - later) - WRITE_SECONDS

    def left(self, part: str) -> float:
        return self.deadline(part) - self.elapsed()

    def record(self, part: str) -> dict:
        return self.parts.setdefault(part, {"seconds": 0.0, "done": 0, "total": 0, "cut": [],
                                            "deadline_s": round(self.deadline(part), 1)})

    def units(self, part: str, items, label=str, estimate: float = 0.0, cost=None):
        """Yield the items while the part's deadline leaves room for the next: its cost (`cost(item)`, 1 if
        None) times the most seconds per cost a unit has taken so far (`estimate` until one has run)."""
        items = list(items)
        rec = self.record(part)
        rec["total"] += len(items)
        rate = None
        for i, item in enumerate(items):
            t0, weight = time.perf_counter(), cost(item) if cost else 1.0
            if self.elapsed() + (estimate if rate is None else rate) * weight > self.deadline(part):
                rec["cut"] += [label(x) for x in items[i:]]
                return
            yield item
            rate = max(rate or 0.0, (time.perf_counter() - t0) / weight)
            rec["done"] += 1

    def cut(self, part: str, labels) -> None:
        self.record(part)["cut"] += list(labels)


# ------------------------------------------------------------------------------------------ wheels

def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(paths=None) -> dict:
    """{canonical distribution name: Distribution} over `paths` (default sys.path), the first found winning."""
    out = {}
    for d in importlib.metadata.distributions(path=list(paths or sys.path)):
        name = d.metadata["Name"]
        if name:
            out.setdefault(_canonical(name), d)
    return out


def carried_wheels(directory: Path, site: Path) -> dict:
    """Install the wheels in `directory` whose distributions this Python lacks into `site` (pip
    `--no-index --no-deps --target`), and put `site` on PYTHONPATH for subprocesses.

    Returns {"directory", "site" (None if nothing was installed), "wheels": [{"wheel", "name",
    "version", "action"}]}: each wheel installed, or why not (already installed, built for another
    Python, another version of the same name chosen, pip failed)."""
    rec = {"directory": str(directory), "site": None, "wheels": []}
    paths = sorted(directory.glob("*.whl")) if directory.is_dir() else []
    if not paths:
        rec["note"] = f"no wheels in {directory}"
        return rec
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:
        rec["note"] = "packaging is not installed: the wheels were not inspected"
        return rec
    supported, have = set(sys_tags()), installed()
    best: dict[str, tuple] = {}
    for path in paths:
        name, version, _, tags = parse_wheel_filename(path.name)
        entry = {"wheel": path.name, "name": str(name), "version": str(version)}
        rec["wheels"].append(entry)
        if str(name) in have:
            entry["action"] = f"not installed: {name} {have[str(name)].version} is installed here"
        elif not tags & supported:
            entry["action"] = (f"not installed: built for {sorted(str(t) for t in tags)[0]}, which this Python "
                               f"({next(iter(sys_tags()))}) does not run")
        elif str(name) in best and best[str(name)][0] >= version:
            entry["action"] = f"not installed: {name} {best[str(name)][0]} chosen instead"
        else:
            if str(name) in best:
                best[str(name)][2]["action"] = f"not installed: {name} {version} chosen instead"
            best[str(name)] = (version, path, entry)
            entry["action"] = "installed"
    if not best:
        return rec
    site.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--disable-pip-version-check", "--target", str(site)] + [str(b[1]) for b in best.values()],
                       capture_output=True, text=True)
    if p.returncode != 0:
        lines = [line for line in (p.stderr or p.stdout).splitlines() if line.strip()]
        for _, _, entry in best.values():
            entry["action"] = "pip failed: " + (lines[-1] if lines else f"exit status {p.returncode}")
        return rec
    rec["site"] = str(site)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return rec


def missing_requirements(dist: str, paths=None) -> list[str] | None:
    """None if `dist` is not installed on `paths`; else its requirements (extras left out) that are not
    installed there, or not in the version it asks for."""
    from packaging.requirements import Requirement
    have = installed(paths)
    d = have.get(_canonical(dist))
    if d is None:
        return None
    missing = []
    for text in d.requires or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        got = have.get(_canonical(req.name))
        if got is None:
            missing.append(f"{req.name} (not installed)")
        elif req.specifier and not req.specifier.contains(got.version, prereleases=True):
            missing.append(f"{req.name}{req.specifier} (found {got.version})")
    return missing


def keras_unavailable(wheels: dict) -> str | None:
    """Why the Keras subprocesses cannot run here (Keras or one of its requirements missing), or None."""
    paths = ([wheels["site"]] if wheels.get("site") else []) + sys.path
    try:
        missing = missing_requirements("keras", paths)
    except ImportError:
        return "packaging is not installed, so Keras (which requires it) cannot run"
    if missing is None:
        return (f"keras is not installed and {wheels['directory']} holds no keras wheel this Python runs: "
                "run scripts/gpu-wheels where pip reaches a registry, and carry .whl")
    if missing:
        return (f"keras needs {', '.join(missing)}, neither installed here nor carried in {wheels['directory']} "
                "(scripts/gpu-wheels fetches them)")
    return None


# ------------------------------------------------------------------------------------------ the report

def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _r(x):
    """3 significant digits, inf and nan kept (JSON's Infinity / NaN)."""
    if isinstance(x, float) and math.isfinite(x) and x != 0:
        return float(f"{x:.3g}")
    if isinstance(x, dict):
        return {k: _r(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_r(v) for v in x]
    return x


@dataclass
class Report:
    settings: Settings
    clock: Clock
    data: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)   # {"part", "what", "why"}
    errors: list = field(default_factory=list)    # {"part", "what", "error"}
    warned: dict = field(default_factory=dict)    # warning text -> count
    measured: list = field(default_factory=list)  # measure.Measured of the presets part, for the evidence
    frameworks: list = field(default_factory=list)  # the in-process frameworks that run on the device
    progress: object = None
    line: str = ""   # the verdict, as last written
    code: int = 0    # the exit status that goes with it

    def skip(self, part, what, why):
        self.skipped.append({"part": part, "what": what, "why": why})

    def error(self, part, what, e):
        self.errors.append({"part": part, "what": what, "error": _one_line(e)})

    def say(self, message):
        if self.progress:
            self.progress(f"[{self.clock.elapsed():6.1f} s] {message}")


def _cell(results) -> dict:
    bad = [r for r in results if not r.passed]
    return {"max_abs": max(r.max_abs for r in results), "passed": not bad,
            **({"detail": str(bad[0])} if bad else {})}


def _error_cell(e) -> dict:
    return {"max_abs": math.inf, "passed": False, "error": _one_line(e)}


def _device_frameworks(s: Settings, rep: Report) -> list[str]:
    """The in-process frameworks that run on the device; the others are skip lines."""
    out = []
    for f in s.frameworks:
        if f == "tf" and s.device != "cpu":
            rep.skip("environment", "tf_impl in this process", "the tf framework runs on cpu only in this harness "
                     "(TFBackend.devices); on the GPU tf_impl runs through Keras's jax and torch backends (Keras)")
        elif f == "tf" and importlib.util.find_spec("tensorflow") is None:
            rep.skip("environment", "tf_impl in this process (--frameworks tf)",
                     "tensorflow is not installed in this environment")
        else:
            out.append(f)
    return out


# ------------------------------------------------------------------------------------------ parts

def part_environment(s: Settings, rep: Report) -> None:
    import torch
    env = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "numpy": np.__version__, "torch_cuda": torch.version.cuda, **framework_environment(["torch"])}
    if s.device == "cuda":
        env["cuda_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    for name in ("flash", "mem_efficient", "math", "cudnn"):  # which kernels F.scaled_dot_product_attention may use
        fn = getattr(torch.backends.cuda, f"{name}_sdp_enabled", None)
        if fn is not None:
            env[f"sdpa_{name}_enabled"] = bool(fn())
    rep.data["environment"] = env
    wheels = carried_wheels(s.wheels, Path(tempfile.gettempdir()) / f"tmirror-wheels-{os.getpid()}")  # made if used
    rep.data["wheels"] = wheels
    carried = installed([wheels["site"]]) if wheels.get("site") else {}
    have = installed()
    packages = {}
    for name, dists in (("torch", ("torch",)), ("jax", ("jax",)), ("keras", ("keras",)),
                        ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")), ("transformers", ("transformers",)),
                        ("tensorflow", ("tensorflow", "tensorflow-cpu"))):
        found = next((have.get(d) or carried.get(d) for d in dists if have.get(d) or carried.get(d)), None)
        packages[name] = {"importable": importlib.util.find_spec(name) is not None, "version": found and found.version}
        if name not in have and any(d in carried for d in dists):
            packages[name].update(importable=True, carried="installed from .whl for the subprocesses")
    plugins = sorted(f"{d.metadata['Name']} {d.version}" for d in have.values()
                     if _canonical(d.metadata["Name"]).startswith(("jax-cuda", "jaxlib")))
    if plugins:
        packages["jax"]["plugins"] = plugins
    if packages["onnxruntime"]["importable"]:
        try:
            import onnxruntime
            packages["onnxruntime"]["providers"] = list(onnxruntime.get_available_providers())
        except Exception as e:  # a broken onnxruntime is a fact to report, not a reason to stop
            packages["onnxruntime"]["providers"] = [_one_line(e)]
    rep.data["packages"] = packages
    rep.skip("environment", "onnxruntime", "gpu-check runs no ONNX graph: the ONNX conformance is `tmirror export` "
             "and `tmirror report --onnx`, on cpu" + ("" if packages["onnxruntime"]["importable"]
                                                      else "; onnxruntime is not installed here either"))
    if not packages["tensorflow"]["importable"]:
        rep.skip("environment", "tensorflow", "not installed in this environment: tf_impl runs on Keras's jax and "
                 "torch backends instead, and the tf columns of the CPU matrix stay the CPU's")
    rep.data["keras_unavailable"] = keras_unavailable(wheels)
    rep.frameworks = _device_frameworks(s, rep)
    if "tf" in rep.frameworks:
        _quiet_import("tensorflow", "keras", "tf_impl")


def _quiet_import(*modules) -> None:
    """Import modules with file descriptor 2 sent to /dev/null: TensorFlow's C++ start-up lines (oneDNN,
    absl's "before InitializeLog") ignore TF_CPP_MIN_LOG_LEVEL and would land in the user's output."""
    import importlib
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            for module in modules:
                importlib.import_module(module)
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def part_matrix(s: Settings, rep: Report) -> None:
    columns = [(f, d) for f in rep.frameworks for d in s.dtypes if (f, d) != ("numpy", "float64")]
    cells, unsupported = {}, {}
    for case in rep.clock.units("matrix", s.cases, case_id):
        cid = case_id(case)
        rep.say(f"matrix {cid}")
        for f, d in columns:
            why = supports(f, case, d, s.device)
            if why:
                unsupported.setdefault((f, d, why), []).append(cid)
                continue
            try:
                cells[f"{cid}|{f}|{d}"] = _cell(check_case(*case, f, d, s.device))
            except Exception as e:
                cells[f"{cid}|{f}|{d}"] = _error_cell(e)
    for (f, d, why), ids in unsupported.items():
        rep.skip("matrix", f"{f} {d} on {s.device} for {len(ids)} case(s) ({', '.join(ids[:3])}...)", why)
    rep.data["matrix"] = {"columns": columns, "device": s.device, "cells": cells}


def _tf32_state(device: str, dtype: str) -> dict:
    """The TF32 settings in force inside a build's policy: torch's flags on cuda, the emulation on cpu."""
    import torch
    if device != "cuda":
        return {"TF32Emulation": dtype == "tf32"}
    state = {"allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
             "float32_matmul_precision": torch.get_float32_matmul_precision()}
    fp32 = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if fp32 is not None:
        state["fp32_precision"] = str(fp32)
    return state


def _tf32_unit(s: Settings, label, cfg, w, inputs, reference=None) -> dict:
    ref_model = build("numpy", cfg, w, dtype="float64")
    ref_out, ref_trace = traced(ref_model, inputs)
    reference = reference or ref_out
    row = {"case": label}
    for mode, dtype in (("off", "float32"), ("on", "tf32")):
        m = build("torch", cfg, w, device=s.device, dtype=dtype)
        with m.policy():
            flags = _tf32_state(s.device, dtype)
        out, tr = traced(m, inputs)
        stats = [measure.error_stats(out[k], reference[k]) for k in reference]
        row[mode] = {"dtype": dtype, "flags": flags, "norm_rel": max(x["norm_rel"] for x in stats),
                     "needed": max(x["needed"] for x in stats), "max_abs": max(x["max_abs"] for x in stats),
                     "float32_row": all(c.passed for c in compare_outputs(label, out, reference, "float32")),
                     "tf32_row": all(c.passed for c in compare_outputs(label, out, reference, "tf32"))}
        if mode == "on":
            ops = compare_traces(ref_trace, tr, "float32")
            first = next((c for c in ops if not c.passed), None)
            row["first_divergence"] = first.name if first else None
            row["cause"] = (tf32_cause({"torch tf32": True, "float64 reference": False}, ops)
                            or "nothing left the float32 row with TF32 on: no cause to name")
    off = row["off"]["norm_rel"]
    row["ratio"] = row["on"]["norm_rel"] / off if off else math.inf
    return row


def part_tf32(s: Settings, rep: Report) -> None:
    units = [("case", (name, "default")) for name in TF32_CASES if (name, "default") in s.cases]
    units += [("preset", p) for p in s.presets[:1]]
    rows = []
    for unit, what in rep.clock.units("tf32", units, lambda u: case_id(u[1]) if u[0] == "case" else u[1],
                                      estimate=1 if s.dry_run else 5):
        rep.say(f"tf32 {what if unit == 'preset' else case_id(what)}")
        try:
            if unit == "case":
                _, cfg, w, inputs, reference = case_data(*what)
                rows.append(_tf32_unit(s, case_id(what), cfg, w, inputs, reference))
            else:
                cfg = presets.get(what)
                w = weights.initialize(cfg, seed=0)
                rows.append(_tf32_unit(s, what, cfg, w, families.get(cfg.kind).inputs(cfg, 1, s.seq_len)))
        except Exception as e:
            rep.error("tf32", what if unit == "preset" else case_id(what), e)
    env = rep.data.get("environment", {})
    capable = s.device == "cpu" or bool(env.get("tf32_capable_gpu"))
    effect = min((r["ratio"] for r in rows), default=0.0)  # TF32 must show in every case: the flags took
    misnamed = [r["case"] for r in rows if "does not look like TF32" in r["cause"]]
    rows_ok = all(r["on"]["tf32_row"] and r["off"]["float32_row"] for r in rows)
    passed = (rows_ok and not misnamed and (effect >= 10 or not capable)) if rows else None  # None: nothing ran
    rep.data["tf32"] = {"rows": rows, "capable": capable, "effect": effect, "misnamed": misnamed,
                        "passed": passed, "emulated": s.device == "cpu"}


def part_presets(s: Settings, rep: Report) -> None:
    for f in families.FAMILIES.values():
        if f.base_preset is None:
            rep.skip("presets", f"family {f.name}", "declares no Family.base_preset")
    frameworks = rep.frameworks
    units = []
    for p in sorted(s.presets, key=_parameters):
        for impl in ("reference", "fused"):
            try:  # a combination the mirrors refuse (a fused kernel has no logit soft-cap) is a skip line
                registry.param_shapes(presets.get(p).replace(attention_impl=impl))
                units.append((p, impl))
            except ValueError as e:
                rep.skip("presets", f"{p} with attention_impl={impl!r}", str(e).splitlines()[0])
    cells, labels = {}, []
    # smallest first; a unit is started only if its size times the slowest rate so far fits (before the
    # first: 25 s a bert-base, 110M parameters, on cuda), so a billion-parameter preset is cut, not overrun
    for preset, impl in rep.clock.units("presets", units, lambda u: f"{u[0]}[{u[1]}]",
                                        estimate=(2 if s.dry_run else 25) / 1.1e8,
                                        cost=lambda u: max(_parameters(u[0]), 1.1e8)):
        label = preset if impl == presets.get(preset).attention_impl else f"{preset}[{impl}]"
        labels.append(label)
        rep.say(f"presets {label}")
        try:
            results = measure.measure_preset(preset, frameworks, s.dtypes, s.device, 1, s.seq_len,
                                             attention_impl=impl)
        except Exception as e:
            for f in frameworks:
                for d in s.dtypes:
                    cells[f"{label}|{f}|{d}"] = _error_cell(e)
            continue
        rep.measured += results
        for m in results:
            cells[f"{label}|{m.framework}|{m.dtype}"] = _measured_cell(m)
    rep.data["presets"] = {"columns": [(f, d) for f in frameworks for d in s.dtypes], "device": s.device,
                           "rows": labels, "cells": cells, "batch": 1, "seq_len": s.seq_len}


def _measured_cell(m) -> dict:
    """A matrix cell from measured statistics: the row's bound on its metric (`measure.metric`) is the
    test `compare` applies (atol = rtol rows: needed <= atol; scale rows: norm_rel <= scale_rtol)."""
    if m.error:
        return {"max_abs": math.inf, "passed": False, "error": m.error.split(";")[0]}
    key, bound = measure.metric(m.dtype), measure.bound(TOLERANCES[m.dtype])
    worst = max(st[key] for st in m.outputs.values())
    return {"max_abs": max(st["max_abs"] for st in m.outputs.values()),
            "passed": worst <= bound and all(st["nonfinite"] == 0 for st in m.outputs.values()),
            key: worst}


def keras_launch(s: Settings, rep: Report):
    """Start the Keras subprocesses, before the in-process parts: they run beside them (and on the GPU,
    a TF32-off twin of each backend whose default is TF32 on, float32 only). Returns the batch or None."""
    why = rep.data.get("keras_unavailable")
    backends = []
    for b in s.keras_backends:
        reason = why or keras_backends.unavailable(b)
        if reason:
            rep.skip("keras", f"tf_impl on Keras's {b} backend", reason)
        else:
            backends.append(b)
    rep.data["keras"] = {"backends": list(s.keras_backends), "ran": backends, "dtypes": list(s.keras_dtypes),
                         "cells": {}, "devices": {}, "precision": {}, "named": [], "confirm": {}}
    if not backends or not s.keras_dtypes:
        return None
    items = _keras_items(s)
    for preset in s.presets:
        if _parameters(preset) > KERAS_MAX_PARAMETERS:
            rep.skip("keras", f"{preset} on Keras", f"{_parameters(preset):,} parameters, over the "
                     f"{KERAS_MAX_PARAMETERS:,} Keras's eager subprocesses run within the budget (torch runs it)")
    confirm = [b for b in backends if s.device == "cuda" and b in TF32_ON_BY_DEFAULT and "float32" in s.keras_dtypes]
    labels = [f"keras[{b}] {d} {it[0]}" for b in backends for d in s.keras_dtypes for it in items if d in it[5]]
    labels += [f"keras[{b},TF32 off] float32 {it[0]}" for b in confirm for it in items if "float32" in it[5]]
    rep.clock.record("keras")["total"] += len(labels)
    if rep.clock.left("keras") < 10:  # too little time to start Keras at all
        rep.clock.cut("keras", labels)
        return None
    twins = f" (and TF32-off twins of {', '.join(confirm)})" if confirm else ""
    rep.say(f"keras: launching {', '.join(backends)}{twins} on {len(items)} cases x {len(s.keras_dtypes)} dtypes, "
            "beside the parts below")
    batch = keras_backends.KerasBatch(items, s.keras_dtypes)
    for b in backends:
        batch.launch(b)
    for b in confirm:
        column = f"{b},TF32 off"
        batch.launch(b, env=TF32_OFF_ENV[b], dtypes=("float32",), tag=column)
        rep.data["keras"]["confirm"][b] = {"env": TF32_OFF_ENV[b], "column": f"keras[{column}]"}
    return batch


def part_keras(s: Settings, rep: Report, batch) -> None:
    """Collect the Keras subprocesses (stopped at the part's deadline), compare, and name TF32 where it is why."""
    if batch is None:
        return
    left = max(0.0, rep.clock.left("keras"))
    rep.say(f"keras: waiting up to {left:.0f} s for the subprocesses")
    runs = batch.collect(timeout=left)
    data, rec = rep.data["keras"], rep.clock.record("keras")
    for (label, tag, d), run in runs.items():
        data["cells"][f"{label}|keras[{tag}]|{d}"] = _keras_cell(run)
        if run.device:
            data["devices"].setdefault(tag, run.device)
            data["precision"].setdefault(tag, run.precision)
        if run.error and "no result within" in run.error:
            rep.clock.cut("keras", [f"keras[{tag}] {d} {label}"])
        else:
            rec["done"] += 1
    data["named"] = named_tf32(runs, data["confirm"], batch.references)


def named_tf32(runs: dict, confirm: dict, references: dict) -> list[dict]:
    """The float32 runs on a GPU that fail the float32 row, pass it with their backend's TF32 switch off
    (the `confirm` twin: {backend: {"env"}}, runs tagged "BACKEND,TF32 off") and are within the tf32 row:
    TF32 is their cause, named; any other failure stays a failure."""
    named = []
    for b, c in confirm.items():
        for (label, tag, d), first in runs.items():
            if tag != b or d != "float32" or first.error or first.passed or not _on_gpu(first.device):
                continue
            second = runs.get((label, f"{b},TF32 off", "float32"))
            within = all(x.passed for x in compare_outputs(label, first.outputs, references[label], "tf32"))
            if second is not None and second.passed and within:
                named.append({"case": label, "backend": b, "cause": (
                    f"TF32: fails the float32 row at {b}'s default matmul precision, passes with "
                    f"{', '.join(f'{k}={v}' for k, v in c['env'].items())}, and is within the tf32 row")})
    return named


def _keras_items(s: Settings) -> list:
    """(label, cfg, weights, inputs, reference, dtypes): every chosen case in every Keras dtype, then the presets."""
    items = []
    for case in s.cases:
        _, cfg, w, inputs, reference = case_data(*case)
        items.append((case_id(case), cfg, w, inputs, reference, s.keras_dtypes))
    if "float32" in s.keras_dtypes:
        for preset in s.presets:  # full size: float32 only, after every case
            if _parameters(preset) > KERAS_MAX_PARAMETERS:
                continue  # a skip line (keras_launch)
            cfg = presets.get(preset)
            w = weights.initialize(cfg, seed=0)
            items.append((preset, cfg, w, families.get(cfg.kind).inputs(cfg, 1, s.seq_len), None, ("float32",)))
    return items


def _on_gpu(device) -> bool:
    return bool(device) and any(tag in str(device).lower() for tag in ("cuda", "gpu"))


def _keras_cell(run) -> dict:
    if run.error:
        return {"max_abs": math.inf, "passed": False, "error": run.error}
    return _cell(run.comparisons)


def _timing_inputs(cfg, batch: int, length: int) -> dict:
    """The family's inputs with every position real (mask of ones) and random token ids."""
    base = families.get(cfg.kind).inputs(cfg, batch, length)
    rng = np.random.default_rng(batch)
    out = {}
    for k, v in base.items():
        if k == "input_ids":
            out[k] = rng.integers(0, cfg.vocab_size, (batch, length)).astype(v.dtype)
        elif k == "attention_mask":
            out[k] = np.ones_like(v)
        elif k == "token_type_ids":
            out[k] = np.zeros_like(v)
        else:
            out[k] = v
    return out


def _best_of(fn, runs: int, sync) -> tuple[float, float]:
    """(best, median) seconds of `runs` calls after 3 warm-up calls, the device synchronized around each."""
    import torch
    with torch.inference_mode():
        for _ in range(3):
            fn()
        sync()
        times = []
        for _ in range(runs):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def part_timing(s: Settings, rep: Report) -> None:
    import torch
    rows = []
    rep.data["timing"] = {"rows": rows, "dtype": "bfloat16", "runs": s.timing_runs, "device": s.device}
    if importlib.util.find_spec("transformers") is None:
        rep.skip("timing", "every row", "transformers is not installed in this environment")
        return
    chosen = []
    for preset in TIMING_PRESETS:
        if preset not in presets.names():
            rep.skip("timing", preset, f"no preset {preset!r} is declared yet (presets: {', '.join(presets.names())})")
            continue
        family = families.get(presets.get(preset).kind)
        stand_in = _smallest(family) if s.dry_run else preset
        if transformers_oracle.class_name(presets.get(stand_in)) is None:
            rep.skip("timing", preset, f"transformers has no model of the {family.name} family's layout")
            continue
        chosen.append(stand_in)
    sync = torch.cuda.synchronize if s.device == "cuda" else (lambda: None)
    chosen.sort(key=_parameters)  # a unit's time grows with its parameters: the prior is 20 s a bert-base on cuda
    for preset in rep.clock.units("timing", chosen, estimate=(3 if s.dry_run else 20) / 1.1e8,
                                  cost=lambda p: max(_parameters(p), 1.1e8)):
        rep.say(f"timing {preset} bfloat16")
        try:
            cfg = presets.get(preset)
            w = weights.initialize(cfg, seed=0)
            contenders = {
                "torch_impl (reference attention)": build("torch", cfg.replace(attention_impl="reference"), w,
                                                          device=s.device, dtype="bfloat16"),
                "torch_impl (fused attention)": build("torch", cfg.replace(attention_impl="fused"), w,
                                                      device=s.device, dtype="bfloat16")}
            hf = transformers_oracle.transformers_model(cfg, w, attn_implementation="sdpa", dtype="bfloat16")
            hf = hf.to(s.device).eval()
            for batch, length in s.timing_shapes:
                x = _timing_inputs(cfg, batch, min(length, cfg.max_positions))
                tensors = {k: torch.from_numpy(v).to(s.device) for k, v in x.items()}
                calls, outs = {}, {}
                for name, built in contenders.items():
                    module = built.module.eval()
                    mine = built.backend.inputs(x, "bfloat16", s.device)
                    calls[name] = (lambda module=module, mine=mine: as_dict(module(**mine)))
                calls["transformers (sdpa)"] = lambda: hf(**tensors)
                ms = {}
                for name, fn in calls.items():
                    best, median = _best_of(fn, s.timing_runs, sync)
                    ms[name] = {"best": 1e3 * best, "median": 1e3 * median}
                    with torch.inference_mode():
                        outs[name] = fn()
                key = next(k for k in outs["torch_impl (fused attention)"] if k in outs["transformers (sdpa)"])
                diff = (outs["torch_impl (fused attention)"][key].float() - outs["transformers (sdpa)"][key].float())
                sdpa = ms["transformers (sdpa)"]["best"]
                rows.append({"preset": preset, "batch": batch, "tokens": x["input_ids"].shape[1], "ms": ms,
                             "ratio_reference": ms["torch_impl (reference attention)"]["best"] / sdpa,
                             "ratio_fused": ms["torch_impl (fused attention)"]["best"] / sdpa,
                             "compared": key, "max_abs_diff": float(diff.abs().max())})
            del contenders, hf
        except Exception as e:
            rep.error("timing", preset, e)


def part_tolerances(s: Settings, rep: Report) -> None:
    frameworks = rep.frameworks
    units = [(regime, case) for regime in s.regimes for case in s.cases]
    results = []
    for regime, case in rep.clock.units("tolerances", units, lambda u: f"{u[0]} {case_id(u[1])}"):
        if case == s.cases[0]:
            rep.say(f"tolerances: regime {regime}")
        try:
            results += measure.measure_case(*case, regime, frameworks, s.dtypes, s.device)
        except Exception as e:
            rep.error("tolerances", f"{regime} {case_id(case)}", e)
    results += rep.measured
    if not results:
        return
    command = (f"tmirror tolerances --device {s.device} --frameworks {','.join(frameworks)} --dtypes "
               f"{','.join(s.dtypes)} --presets {','.join(s.presets)} (run by {s.command})")
    ev = measure.evidence(results, command, TOLERANCES)
    s.out.mkdir(parents=True, exist_ok=True)
    md, js = s.out / f"tolerances-{s.device}.md", s.out / f"tolerance_evidence_{s.device}.json"
    js.write_text(measure.dumps(ev))
    md.write_text(measure.markdown(ev, f"conformance/compare/{js.name}"))  # where it is committed
    rep.data["tolerances"] = {"rows": ev["rows"], "summary": {d: {f: {k: v for k, v in x.items() if k != "ops"}
                                                                   for f, x in fws.items()}
                                                               for d, fws in ev["summary"].items()},
                              "files": [md.name, js.name], "evidence": ev}


PARTS = {"matrix": part_matrix, "tf32": part_tf32, "presets": part_presets, "tolerances": part_tolerances,
         "keras": part_keras, "timing": part_timing}


# ------------------------------------------------------------------------------------------ run

def run(s: Settings, progress=None, started: float | None = None) -> Report:
    """Every part in priority order within the budget; the report written after each part."""
    rep = Report(s, Clock(s.budget, started), progress=progress)
    for name in RESERVE:  # the parts' records in their order
        rep.clock.record(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            part_environment(s, rep)
        except Exception as e:
            rep.error("environment", "the part", e)
        batch, t0 = None, time.perf_counter()
        try:
            batch = keras_launch(s, rep)
        except Exception as e:
            rep.error("keras", "launching the subprocesses", e)
        rep.clock.record("keras")["seconds"] += time.perf_counter() - t0
        write(rep, caught)
        for name in RESERVE:
            t0 = time.perf_counter()
            try:
                PARTS[name](s, rep, batch) if name == "keras" else PARTS[name](s, rep)
            except Exception as e:
                rep.error(name, "the part", e)
            rep.clock.record(name)["seconds"] += time.perf_counter() - t0
            write(rep, caught)
        if batch is not None:
            batch.close()  # collected already, unless its part raised first
    return rep


def _tally(cells: dict, skip_named=()) -> tuple[int, int, list]:
    bad = [k for k, c in cells.items() if not c["passed"] and k not in skip_named]
    return len(cells) - len(bad), len(cells), bad


def verdict(rep: Report) -> tuple[str, int]:
    """(the one-line verdict, the exit status): FAIL (1) on any failed cell, row, check or part error;
    PARTIAL (0) when everything that ran passed but the budget cut some of it; else PASS (0)."""
    s, d = rep.settings, rep.data
    named = {f"{n['case']}|keras[{n['backend']}]|float32" for n in d.get("keras", {}).get("named", [])}
    confirm_columns = {c["column"] for c in d.get("keras", {}).get("confirm", {}).values()}
    keras_cells = {k: c for k, c in d.get("keras", {}).get("cells", {}).items() if k.split("|")[1] not in
                   confirm_columns}
    counts = {"matrix": _tally(d.get("matrix", {}).get("cells", {})),
              "presets": _tally(d.get("presets", {}).get("cells", {})),
              "keras": _tally(keras_cells, named)}
    failures = [f"{part} {', '.join(k.replace('|', ' ') for k in bad[:2])}{' ...' if len(bad) > 2 else ''}"
                for part, (_, _, bad) in counts.items() if bad]
    tf32 = d.get("tf32")
    if tf32 and tf32["passed"] is False:
        failures.append("tf32 check")
    rows = d.get("tolerances", {}).get("rows", {})
    uncovered = [dt for dt, row in rows.items() if row.get("covered") is False]
    if uncovered:
        failures.append(f"tolerance rows {', '.join(uncovered)} do not cover it")
    if rep.errors:
        failures.append(f"{len(rep.errors)} error(s) ({rep.errors[0]['part']}: {rep.errors[0]['error'][:60]})")
    cut = sum(len(p["cut"]) for p in rep.clock.parts.values())
    word = "FAIL" if failures else ("PARTIAL" if cut else "PASS")
    parts = [f"{name} {p}/{n}" for name, (p, n, _) in counts.items()]
    if named:
        parts[-1] += f" ({len(named)} TF32 named)"
    if tf32 and tf32["rows"]:
        parts.append(f"TF32 on/off x{tf32['effect']:.0f}" + (" (emulated)" if tf32["emulated"] else ""))
    if rows:
        parts.append(f"tolerance rows {sum(1 for r in rows.values() if r.get('covered'))}/{len(rows)} cover it")
    timing = d.get("timing", {}).get("rows", [])
    if timing:
        parts.append(f"{timing[0]['preset']} bf16 torch_impl fused/sdpa {timing[0]['ratio_fused']:.2f}")
    line = (f"gpu-check {s.slug} ({s.device}): {word}" + (f" [{'; '.join(failures)}]" if failures else "")
            + f": {', '.join(parts)}; {len(rep.skipped)} skipped, {cut} cut; {rep.clock.elapsed():.0f} s of "
            f"{s.budget:.0f}; wrote {s.out / f'gpu-{s.slug}.md'}")
    return line, 1 if failures else 0


def imported(names=("tensorflow", "keras", "jax")) -> dict:
    """Which of these this process has imported (a module set to None, as a blocker does, is not)."""
    return {n: sys.modules.get(n) is not None for n in names}


def record(rep: Report, caught=()) -> dict:
    for w in caught:
        text = f"{w.category.__name__}: {(str(w.message).splitlines() or [''])[0][:200]}"
        rep.warned[text] = rep.warned.get(text, 0) + 1
    if isinstance(caught, list):
        caught.clear()
    line, code = verdict(rep)
    s = rep.settings
    data = {k: v for k, v in rep.data.items() if k != "tolerances"}
    if "tolerances" in rep.data:
        data["tolerances"] = {k: v for k, v in rep.data["tolerances"].items() if k != "evidence"}
    return _r({"schema": 1, "command": s.command, "generated": time.strftime("%Y-%m-%d %H:%M"),
               "device": {"kind": s.device, "slug": s.slug, "dry_run": s.dry_run},
               "settings": {"budget_seconds": s.budget, "frameworks": list(s.frameworks), "dtypes": list(s.dtypes),
                            "keras_backends": list(s.keras_backends), "keras_dtypes": list(s.keras_dtypes),
                            "cases": [case_id(c) for c in s.cases], "presets": s.presets, "seq_len": s.seq_len,
                            "regimes": list(s.regimes), "timing_shapes": [list(x) for x in s.timing_shapes],
                            "timing_runs": s.timing_runs, "wheels": str(s.wheels)},
               "verdict": {"line": line, "exit_status": code}, "elapsed_seconds": rep.clock.elapsed(),
               "parts": rep.clock.parts, "skipped": rep.skipped, "errors": rep.errors,
               "warnings": [{"warning": k, "count": v} for k, v in rep.warned.items()],
               "imported_in_this_process": imported(), **data})


def write(rep: Report, caught=()) -> list[Path]:
    s = rep.settings
    s.out.mkdir(parents=True, exist_ok=True)
    data = record(rep, caught)
    rep.line, rep.code = data["verdict"]["line"], data["verdict"]["exit_status"]
    js, md = s.out / f"gpu-{s.slug}.json", s.out / f"gpu-{s.slug}.md"
    js.write_text(measure.dumps(data))
    md.write_text(markdown(data, rep.data.get("tolerances", {}).get("evidence")))
    return [md, js]


# ------------------------------------------------------------------------------------------ Markdown

def _cells_from(section: dict) -> dict:
    return {tuple(k.split("|")): (c["max_abs"], c["passed"]) for k, c in section.get("cells", {}).items()}


def _matrix_block(ids, columns, section, device) -> list[str]:
    cells = _cells_from(section)
    passed = sum(ok for _, ok in cells.values())
    worst = {f"{f} {d}": max((v[0] for (cid, ff, dd), v in cells.items() if (ff, dd) == (f, d)), default=None)
             for f, d in columns}
    lines = [f"**{passed} of {len(cells)} cells pass.** Worst error per column: "
             + ", ".join(f"{k} {'-' if v is None else f'{v:.1e}'}" for k, v in worst.items()) + ".", "",
             matrix.table(ids, [tuple(c) for c in columns], cells, device), ""]
    bad = [(k, c) for k, c in section.get("cells", {}).items() if not c["passed"]]
    if bad:
        lines += ["Failed cells:", ""] + [f"- {k.replace('|', ' ')}: {c.get('error') or c.get('detail', '')}"
                                          for k, c in bad[:30]] + [""]
    return lines


def _e(x) -> str:
    return "-" if x is None else ("inf" if x == math.inf else f"{x:.2e}")


def markdown(data: dict, evidence: dict | None = None) -> str:
    dev = data["device"]
    env = data.get("environment", {})
    title = env.get("cuda_device", "CPU dry run") if dev["kind"] == "cuda" else "CPU dry run"
    lines = [f"# GPU conformance: {title} ({dev['kind']})", "",
             f"Generated by `{data['command']}` on {data['generated']} in {data['elapsed_seconds']:.0f} s "
             f"(budget {data['settings']['budget_seconds']:.0f} s). "
             + ("This is the CPU dry run (`--device cpu`): every part on small inputs, the device being the cpu; "
                "TF32 is torch's emulation (`TF32Emulation`), and no device-against-cpu agreement exists. "
                if dev["dry_run"] else "torch_impl runs on the GPU against the float64 NumPy reference on the CPU. ")
             + "Tables have the columns of `reports/README.md` (the CPU matrix) and `reports/tolerances.md` "
               "(the tolerance evidence), to be read side by side.", "",
             f"**Verdict:** `{data['verdict']['line']}`", ""]
    lines += ["## Environment", "", "| | |", "|---|---|"]
    keys = ("cuda_device", "cuda_capability", "cuda_memory_gib", "torch", "torch_cuda", "python", "numpy", "platform",
            "cpu_count", "torch_threads", "tf32_capable_gpu", "torch_tf32_matmul", "torch_float32_matmul_precision",
            "torch_cuda_matmul_fp32_precision", "sdpa_flash_enabled", "sdpa_mem_efficient_enabled",
            "sdpa_math_enabled", "sdpa_cudnn_enabled")
    lines += [f"| {k} | {env[k]} |" for k in keys if k in env] + [""]
    lines += ["| package | importable | version | used for |", "|---|---|---|---|"]
    use = {"torch": "torch_impl on the device (every part)", "jax": "Keras's jax backend (subprocess)",
           "keras": "tf_impl (subprocesses only)", "onnxruntime": "nothing here (reported)",
           "transformers": "the timing table's sdpa baseline", "tensorflow": "Keras's tensorflow backend "
           "(subprocess), and tf_impl in this process with --frameworks tf on cpu"}
    for name, p in data.get("packages", {}).items():
        extra = "; ".join(f"{k}: {', '.join(v) if isinstance(v, list) else v}" for k, v in p.items()
                          if k in ("plugins", "providers", "carried"))
        lines.append(f"| {name} | {'yes' if p['importable'] else 'no'} | {p['version'] or '-'}"
                     f"{' (' + extra + ')' if extra else ''} | {use.get(name, '')} |")
    wheels = data.get("wheels", {})
    lines += ["", f"Carried wheels (`{Path(wheels.get('directory', '.whl')).name}/`): "
              + (wheels.get("note") or f"{len(wheels.get('wheels', []))} found"
                 + (f", installed into {wheels['site']} (PYTHONPATH of the Keras subprocesses)"
                    if wheels.get("site") else "")) + "."]
    if wheels.get("wheels"):
        lines += ["", "| wheel | action |", "|---|---|"]
        lines += [f"| {w['wheel']} | {w['action']} |" for w in wheels["wheels"]]
    lines += ["", "Keras: " + (data.get("keras_unavailable") or "importable by the subprocesses, every requirement "
                               "installed") + ".", ""]
    lines += ["## What ran, what was skipped, what was cut", "",
              "Each part has a deadline that leaves the parts after it their share of the budget; a unit "
              "(a case, a preset, a backend) that would run past it is cut and named here.", "",
              "| part | seconds | units run | of | cut | deadline (s from start) |", "|---|---|---|---|---|---|"]
    for name, p in data["parts"].items():
        lines.append(f"| {name} | {p['seconds']:.1f} | {p['done']} | {p['total']} | {len(p['cut'])} | "
                     f"{p['deadline_s']} |")
    lines.append("")
    for name, p in data["parts"].items():
        if p["cut"]:
            lines.append(f"- cut from {name}: {', '.join(p['cut'][:12])}{' ...' if len(p['cut']) > 12 else ''}")
    lines += [f"- skipped ({s['part']}): {s['what']}: {s['why']}" for s in data["skipped"]]
    lines += [f"- ERROR ({e['part']}): {e['what']}: {e['error']}" for e in data["errors"]]
    imported_here = [k for k, v in data["imported_in_this_process"].items() if v]
    lines += [f"- imported in the main process: {', '.join(imported_here) or 'none of tensorflow, keras, jax'}", ""]

    m = data.get("matrix")
    if m:
        lines += [f"## Conformance matrix: every registry case, torch on {dev['kind']}", "",
                  "Every registry component and model (every variant; the family entries are the tiny models) "
                  "against the float64 NumPy reference on the CPU: worst max-abs output error and the verdict "
                  "under the tolerance table (`conformance.suites.cases.check_case`, the generated suite's own "
                  "check).", ""]
        lines += _matrix_block([case_id(c) for c in CASES if case_id(c) in data["settings"]["cases"]],
                               m["columns"], m, m["device"])
    p = data.get("presets")
    if p:
        lines += [f"## Full-size presets (`Family.base_preset`), reference and fused attention, on {dev['kind']}", "",
                  f"Seeded weights (std 0.02), batch {p['batch']} x {p['seq_len']} tokens "
                  "(`measure.measure_preset`): the worst max-abs output error, and the row's bound on its "
                  "metric as the verdict (needed for float32, norm_rel for the low-precision rows: the test "
                  "`compare` applies).", ""]
        lines += _matrix_block(p["rows"], p["columns"], p, p["device"])
    fused = [(k, c) for section in (m or {}, p or {}) for k, c in section.get("cells", {}).items()
             if "[fused" in k.split("|")[0]]
    if fused:
        ok = sum(c["passed"] for _, c in fused)
        lines += ["## Fused attention (`attention_impl=\"fused\"`)", "",
                  f"{ok} of {len(fused)} fused cells pass (the `[fused]` rows above: "
                  "`F.scaled_dot_product_attention` in torch_impl, one NumPy expression in the reference). "
                  + ("SDPA kernels enabled: " + ", ".join(k[5:-8] for k in env if k.startswith("sdpa_") and env[k])
                     + "." if any(k.startswith("sdpa_") for k in env) else ""), ""]
    t = data.get("tf32")
    if t:
        lines += _tf32_lines(t, data)
    k = data.get("keras")
    if k:
        lines += _keras_lines(k, data)
    tm = data.get("timing")
    if tm is not None:
        lines += [f"## Timing: torch_impl against transformers (sdpa), {tm['dtype']}, on {tm['device']}", "",
                  f"Forward only, inference mode, best of {tm['runs']} after 3 warm-up calls, the device "
                  "synchronized around each call; the same canonical weights in both (`weights.to_hf`). "
                  "Ratios below 1 mean torch_impl is faster.", ""]
        if tm["rows"]:
            lines += ["| preset | batch x tokens | torch_impl reference attention ms | torch_impl fused ms | "
                      "transformers sdpa ms | reference / sdpa | fused / sdpa | max abs diff (fused vs sdpa) |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in tm["rows"]:
                ms = r["ms"]
                best = [ms[n]["best"] for n in ("torch_impl (reference attention)", "torch_impl (fused attention)",
                                                "transformers (sdpa)")]
                lines.append(f"| {r['preset']} | {r['batch']} x {r['tokens']} | "
                             + " | ".join(f"{b:.3g}" for b in best)
                             + f" | {r['ratio_reference']:.2f} | {r['ratio_fused']:.2f} | {r['max_abs_diff']:.1e} "
                             f"({r['compared']}) |")
        else:
            lines.append("No row ran: see the skipped and cut lines above.")
        lines.append("")
    if evidence:
        lines += [f"## Tolerance evidence on {dev['kind']} (`tmirror tolerances --device {dev['kind']}`)", "",
                  f"`{evidence['command']}`: the columns of `reports/tolerances.md`; the full evidence, traced "
                  f"ops included, is {' and '.join(data['tolerances']['files'])} beside this file. "
                  f"Metric: {evidence['metric']}.", "", "### Tolerance rows against the evidence", ""]
        lines += measure.rows_table(evidence) + ["", "### Outputs, per dtype and framework (every case and regime)", ""]
        lines += measure.outputs_table(evidence) + [""]
        agreement = measure.agreement_table(evidence)
        lines += ["### The same framework and dtype: this device against cpu", ""]
        lines += (agreement if agreement else ["Not measured: the device is the cpu itself (the dry run)."]) + [""]
    if data["warnings"]:
        lines += ["## Warnings raised during the run", "", "Kept out of the output; each once, with its count.", ""]
        lines += [f"- {w['warning']} (x{w['count']})" for w in data["warnings"][:20]] + [""]
    return "\n".join(lines) + "\n"


def _tf32_lines(t: dict, data: dict) -> list[str]:
    how = ("torch's TF32 emulation on cpu (`TF32Emulation`: matmul operands rounded to 10 mantissa bits)"
           if t["emulated"] else "torch's flags forced by the backend's policy (`tf32_flags`: allow_tf32 and "
           "float32 matmul precision 'high' for dtype tf32, off and 'highest' for float32)")
    lines = ["## TF32 forced on and off", "",
             f"Each case with TF32 off (dtype float32) and on (dtype tf32), through {how}, each against the "
             "float64 reference; `tf32_cause` reads the first traced op out of the float32 row with TF32 on. "
             f"The smallest ratio of norm_rel on / off over the cases: x{t['effect']:.0f}"
             + ("" if t["capable"] else " (this GPU is not TF32-capable: no effect expected)") + ". "
             + {True: "**Check passed**", False: "**Check FAILED**", None: "**Not run** (cut)"}[t["passed"]]
             + ": the float32 row holds with TF32 off, "
             "the tf32 row with TF32 on, TF32's effect is visible in every case (x10 or more) and nothing it "
             "moved is put down to another cause.", "",
             "| case | TF32 off: norm_rel | TF32 on: norm_rel | on / off | float32 row, off | float32 row, on | "
             "tf32 row, on | flags inside the call (on) | first op out of the float32 row (on) | cause |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    yes = lambda b: "pass" if b else "FAIL"  # noqa: E731
    for r in t["rows"]:
        flags = ", ".join(f"{k}={v}" for k, v in r["on"]["flags"].items())
        lines.append(f"| {r['case']} | {_e(r['off']['norm_rel'])} | {_e(r['on']['norm_rel'])} | {r['ratio']:.0f} | "
                     f"{yes(r['off']['float32_row'])} | {yes(r['on']['float32_row'])} | {yes(r['on']['tf32_row'])} | "
                     f"{flags} | {r['first_divergence'] or '-'} | {r['cause']} |")
    agree = data.get("tolerances", {}).get("summary", {}).get("tf32", {}).get("torch", {}).get("device_agreement")
    if agree:
        lines += ["", f"TF32 on the GPU against torch's TF32 emulation on the cpu (the same cases, `device_agreement` "
                      f"of the tf32 dtype): max norm_rel {_e(agree['norm_rel'])}, max abs {_e(agree['max_abs'])}: "
                      "how far the CPU's tf32 row, fitted with the emulation, is from the hardware."]
    return lines + [""]


def _keras_lines(k: dict, data: dict) -> list[str]:
    columns = [(f"keras[{b}]", d) for b in k["ran"] for d in k["dtypes"]]
    columns += [(c["column"], "float32") for c in k["confirm"].values()]
    devices = {f: _device_word(k["devices"].get(f[len("keras["):-1])) for f, _ in columns}
    ids = [case_id(c) for c in CASES if case_id(c) in data["settings"]["cases"]] + data["settings"]["presets"]
    lines = ["## tf_impl on Keras's JAX and PyTorch backends", "",
             "The Keras twin under KERAS_BACKEND=jax, torch (and tensorflow where installed), one subprocess per "
             "backend (`KerasBatch`), on the device each backend picks, against the same float64 "
             "reference; the full-size presets in float32 only. Devices seen: "
             + (", ".join(f"{b} {k['devices'][b]}" for b in k["devices"]) or "none") + "; matmul precision: "
             + ("; ".join(f"{b} " + ", ".join(f"{kk}={vv}" for kk, vv in p.items()) for b, p in k["precision"].items()
                          if p) or "defaults") + ".", ""]
    if not columns:
        return lines + ["No backend ran: see the skipped lines above.", ""]
    section = {"cells": k["cells"]}
    lines += _matrix_block([i for i in ids if any(key.startswith(f"{i}|") for key in k["cells"])], columns, section,
                           devices)
    for n in k["named"]:
        lines.append(f"- {n['case']} on {n['backend']}: {n['cause']}")
    return lines + ([""] if k["named"] else [])


def _device_word(device) -> str:
    return "-" if not device else ("cuda" if _on_gpu(device) else "cpu")
