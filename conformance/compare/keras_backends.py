"""tf_impl on Keras's other backends, as extra columns: the same layers under KERAS_BACKEND=torch or jax.

    runs = keras_backend_runs(cfg, w, inputs, backends=("torch",))
    runs["torch"].passed, runs["torch"].comparisons      # against the float64 NumPy reference
    runs = keras_backend_batch([(label, cfg, w, inputs, reference), ...], ("jax", "torch"), ("float32",))
    runs[(label, "jax", "float32")].device                # where Keras put the tensors: "cuda:0", "gpu", "cpu"
    run = keras_backend_trace("torch", cfg, w, inputs)    # run.records: every traced op, by trace name

Keras fixes its backend once, when it is first imported, from KERAS_BACKEND: a process that
has imported Keras on TensorFlow cannot switch. So each backend runs in its own subprocess
(`python -m conformance.compare.keras_backends DIR DTYPES OUT`), fed the canonical weights (safetensors,
with the config in the metadata) and the inputs (npz) of every case through a temporary directory;
it writes each case's outputs (npz) as it goes (and, asked to trace, every tapped tensor by
trace name, which is how `tmirror compare --a keras-torch` lines Keras-on-torch up op by op), so a subprocess stopped at its timeout still returns
what it finished, and the parent compares them through the one tolerance table. The backends'
subprocesses run at the same time. Keras on another backend puts its tensors where that framework
does by default (torch: a CUDA device if there is one; JAX: its first device, a GPU where jax has
its CUDA plugin); each run records the device and the matmul precision the subprocess saw.

Backends: "tensorflow" (the default, for symmetry), "torch", "jax". jax is a project dependency (the CPU
build from PyPI); its child runs with `jax_enable_x64` (JAX_ENABLE_X64, `CHILD_ENV`), without which jax has
no float64 at all, and float32 still computes in float32 (the child's dtype check). Even so Keras itself
computes some float64 ops in float32 on jax and torch (`KNOWN`, the ops in `keras_passes.DOWNCASTS`): the
child records which of them each case calls (`BackendRun.downcasts`), so a float64 run is held to the
float64 row exactly where it calls none, and to float32's where it does. A machine without a backend's
package reports that instead of running it; a GPU machine with JAX and without TensorFlow runs "jax" and
"torch" and reports "tensorflow" so.

Asked to (`KerasBatch(..., gradients=True, jit=True)`), the same subprocess also differentiates each case
through its backend's own autodiff (torch.autograd, jax.grad of `stateless_call`; compared here with the
float64 NumPy backward under the gradient row: `BackendRun.gradient_comparisons`) and, on jax, runs it
under `jax.jit`, jitted outputs against the reference and eager, and each module jitted alone on its eager
input (`BackendRun.compiled`, the first module whose output moves at all named).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from conformance import weights
from conformance.backends import Gradients, build, cotangents_for
from conformance.backends.dtypes import DTYPES, output_dtypes
from conformance.compare import keras_passes
from conformance.compare.gradients import gradient_rows
from conformance.compare.tolerance import TOLERANCES, Comparison, compare_outputs
from conformance.spec import registry

BACKENDS = ("tensorflow", "torch", "jax")
NAMES = {"keras-torch": "torch", "keras-jax": "jax"}  # what compare and the matrix call tf_impl on a backend
ROOT = Path(__file__).resolve().parents[2]  # the repository root: the child imports this checkout
# (backend, dtype) -> a known limitation of Keras itself, attached to the run as its `note`
KNOWN = {
    ("torch", "float64"):
        "Keras 3 computes ops.matmul, ops.mean and ops.maximum in float32 on the torch backend: "
        "keras/src/backend/common/dtypes.py result_type maps every 64-bit result type to 32-bit "
        "('aligned with JAX'), and keras/src/backend/torch/numpy.py casts matmul, mean and maximum to it "
        "(the TensorFlow backend does not); tf_impl calls them in every linear layer, attention, layer norm, "
        "RMS norm and tied head, so float64 is float32 there (the first op it shows at is the first layer norm)",
    ("jax", "float64"):
        "Keras 3 computes ops.mean, ops.var, ops.cos, ops.sin, ops.tanh and ops.dot_product_attention of float64 "
        "in float32 on the jax backend, even with jax_enable_x64: keras/src/backend/common/dtypes.py result_type "
        "maps every 64-bit result type to 32-bit (BIT64_TO_BIT32_DTYPE, 'aligned with JAX'), and "
        "keras/src/backend/jax/numpy.py (mean and var: their compute dtype result_type(x.dtype, 'float32'); cos, "
        "sin, tanh: result_type(x.dtype, float)) and keras/src/backend/jax/nn.py (dot_product_attention: "
        "result_type(query, key, value)) cast to it; matmul, softmax, GELU, erf, exp and log stay float64. "
        "tf_impl calls mean in every layer and RMS norm, cos and sin in the rotary and sinusoidal tables, tanh in "
        "GELU-tanh and softcapping, dot_product_attention in fused attention: a case that calls none of them "
        "computes float64 end to end (held to the float64 row), the others only to float32's",
}
# What each backend's subprocess environment gets beyond KERAS_BACKEND: JAX would otherwise take 75%
# of the GPU's memory at its first operation, beside the parent's torch; and without x64 it has no float64
CHILD_ENV = {"jax": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "JAX_ENABLE_X64": "True"}}
KERAS_DTYPES = tuple(d for d in DTYPES if d != "tf32")  # `TFBackend.dtypes`, without importing Keras here


@dataclass
class BackendRun:
    backend: str
    dtype: str
    outputs: dict = field(default_factory=dict)
    records: dict = field(default_factory=dict)  # trace name -> tensor, when the batch traces
    module_inputs: dict = field(default_factory=dict)  # module path -> its first call's data input, likewise
    comparisons: list = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    note: str | None = None  # a known Keras limitation for this backend and dtype (`KNOWN`)
    device: str | None = None  # the device of a tensor Keras made in the subprocess, e.g. "cuda:0"
    precision: dict = field(default_factory=dict)  # matmul precision settings the subprocess saw
    downcasts: list = field(default_factory=list)  # the `keras_passes.DOWNCASTS` ops it called on float64
    within_float32: list = field(default_factory=list)  # where that made a float64 float32: under float32's row
    gradients: dict = field(default_factory=dict)  # "input/x", "param/NAME" -> dL/d it, when the batch asks
    gradient_comparisons: list = field(default_factory=list)  # against the float64 NumPy backward
    gradient_within_float32: list = field(default_factory=list)  # where it called a DOWNCASTS op: float32's row
    gradient_error: str | None = None
    # jax, when the batch asks: {"mode": "jit", "vs_eager": {key: max abs}, "comparisons": [...],
    # "modules": [(path, max abs)], "first_diverging": path or None, "largest": (path, max abs) or None}
    compiled: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.comparisons) and all(c.passed for c in self.comparisons)

    @property
    def held(self) -> list:
        """The comparisons that decide the verdict: the dtype's row, or float32's (and no dtype check) where
        the run called an op Keras computes in float32 although given float64 (`downcasts`, `KNOWN`)."""
        return self.within_float32 or self.comparisons

    @property
    def held_passed(self) -> bool:
        return self.error is None and bool(self.held) and all(c.passed for c in self.held)


def unavailable(backend: str) -> str | None:
    """Why `backend` cannot run here, or None."""
    if backend not in BACKENDS:
        return f"keras backend must be one of {list(BACKENDS)}; received {backend!r}"
    module = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}[backend]
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed in this environment, so Keras cannot run on the {backend} backend"
    return None


def keras_backend_runs(cfg, w: dict, inputs: dict, backends=("torch",), dtype: str = "float32",
                       reference: dict | None = None, timeout: float = 600, env: dict | None = None
                       ) -> dict[str, BackendRun]:
    """Run tf_impl on each Keras backend in a subprocess; compare with the float64 reference.

    Returns {backend: BackendRun}; a backend that cannot run, or whose subprocess fails, has
    `error` set (one line) and no comparisons. `env`: more environment variables for the subprocesses.
    """
    runs = keras_backend_batch([("case", cfg, w, inputs, reference)], backends, (dtype,), timeout, env)
    return {b: runs[("case", b, dtype)] for b in backends}


def keras_backend_trace(backend: str, cfg, w: dict, inputs: dict, dtype: str = "float32",
                        timeout: float = 600, env: dict | None = None) -> BackendRun:
    """tf_impl traced on one Keras backend in a subprocess: outputs, every tapped tensor (`records`),
    each module's first data input (`module_inputs`, for replaying another implementation's module on
    it) and the comparison of the outputs with the float64 reference. Raises where the backend cannot run."""
    why = unavailable(backend)
    if why:
        raise ValueError(f"keras-{backend}: {why}")
    batch = KerasBatch([("case", cfg, w, inputs, None)], (dtype,), trace=True)
    batch.launch(backend, env=env)
    return batch.collect(timeout)[("case", backend, dtype)]


def keras_backend_batch(items, backends=("torch",), dtypes=("float32",), timeout: float = 600,
                        env: dict | None = None) -> dict[tuple, BackendRun]:
    """Every item (label, cfg, weights, inputs, reference or None, [dtypes]) on every backend, one
    subprocess per backend, all started together; each item in each of `dtypes` (or the item's own
    sixth field, a subset of them), dtype by dtype in the order given.

    Returns {(label, backend, dtype): BackendRun}. `timeout` bounds the whole batch: a run the
    subprocess had not finished by then has `error` "no result within ...".
    """
    batch = KerasBatch(items, dtypes)
    for backend in backends:
        batch.launch(backend, env=env)
    return batch.collect(timeout)


class KerasBatch:
    """The items written once to a temporary directory; `launch` starts a backend's subprocess on them
    (and may start the same backend again under another `tag` with other environment variables, e.g.
    TF32 off), `collect` waits for all of them and compares. Launch, do other work, then collect:

        batch = KerasBatch(items, ("float32", "bfloat16"))
        batch.launch("jax"); batch.launch("jax", env={"JAX_DEFAULT_MATMUL_PRECISION": "highest"},
                                          dtypes=("float32",), tag="jax,TF32 off")
        runs = batch.collect(timeout=300)      # {(label, tag, dtype): BackendRun}
    """

    def __init__(self, items, dtypes=("float32",), trace: bool = False, gradients: bool = False, jit=False,
                 perturb: dict | None = None):
        """`jit`: False, "outputs" (jax: the model under jax.jit, float32) or "modules" (also each module
        jitted alone, one compilation a module); True means "modules". `perturb` {label: module path}: that
        item's module returns its output + 1e-3 under jit only, a planted change for the jit pass to name."""
        for dtype in dtypes:  # checked here: asking the tf backend would import Keras, so TensorFlow, in this process
            if dtype not in KERAS_DTYPES:
                raise ValueError(f"tf does not support dtype={dtype!r}: tf_impl on Keras runs {list(KERAS_DTYPES)} "
                                 "(TF32 is a matmul mode of the GPU, not a Keras dtype policy)")
        self.dtypes = tuple(dtypes)
        self.items = [(it[0], it[1], it[2], it[3], it[4],
                       tuple(d for d in dtypes if d in (it[5] if len(it) > 5 else dtypes))) for it in items]
        self.references = {it[0]: it[4] if it[4] is not None else build("numpy", it[1], it[2], dtype="float64")(**it[3])
                           for it in self.items}
        self._tmp = tempfile.TemporaryDirectory(prefix="tmirror-keras-")
        self.dir = Path(self._tmp.name)
        for i, (_, cfg, w, inputs, _, _) in enumerate(self.items):
            (self.dir / str(i)).mkdir()
            weights.save(w, self.dir / str(i) / "weights.safetensors", cfg)
            np.savez(self.dir / str(i) / "inputs.npz", **{k: np.asarray(v) for k, v in inputs.items()})
        (self.dir / "items.json").write_text(json.dumps([{"dir": str(i), "dtypes": list(it[5]), "trace": trace,
                                                          "gradients": gradients,
                                                          "jit": "modules" if jit is True else jit,
                                                          "perturb": (perturb or {}).get(it[0])}
                                                         for i, it in enumerate(self.items)]))
        self.gradients = gradients
        self._backward = {}  # label -> the float64 NumPy backward, computed once for every backend and dtype
        self.launched = {}  # tag -> (backend, dtypes, Popen or None, stderr file, start time, why not)

    def launch(self, backend: str, env: dict | None = None, dtypes=None, tag: str | None = None) -> None:
        tag = tag or backend
        dtypes = tuple(d for d in (dtypes or self.dtypes) if d in self.dtypes)
        why = unavailable(backend)
        if why:
            self.launched[tag] = (backend, dtypes, None, None, time.perf_counter(), why)
            return
        out = self.dir / re.sub(r"[^\w.-]+", "_", tag)
        out.mkdir()
        child_env = {**os.environ, **CHILD_ENV.get(backend, {}), **(env or {}), "KERAS_BACKEND": backend,
                     "TF_CPP_MIN_LOG_LEVEL": "3",
                     "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
        stderr = open(out / "stderr.txt", "w")
        p = subprocess.Popen([sys.executable, "-m", "conformance.compare.keras_backends", str(self.dir),
                              ",".join(dtypes), str(out)], stdout=subprocess.DEVNULL, stderr=stderr, env=child_env,
                             cwd=ROOT)
        self.launched[tag] = (backend, dtypes, p, stderr, time.perf_counter(), None)

    def collect(self, timeout: float) -> dict[tuple, BackendRun]:
        """Wait up to `timeout` seconds in all for the subprocesses (then stop them), compare what they wrote."""
        deadline = time.perf_counter() + timeout
        runs = {}
        try:
            for tag, (backend, dtypes, p, stderr, t0, why) in self.launched.items():
                failure = why
                if p is not None:
                    timed_out = False
                    try:
                        p.wait(timeout=max(0.0, deadline - time.perf_counter()))
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
                        timed_out = True
                    stderr.close()
                    out = Path(stderr.name).parent
                    lines = [line for line in (out / "stderr.txt").read_text().splitlines() if line.strip()]
                    failure = (f"keras on {backend}: no result within {timeout:g} s" if timed_out else
                               f"keras on {backend}: " + (lines[-1] if lines else f"exit status {p.returncode}"))
                for i, (label, _, _, _, _, item_dtypes) in enumerate(self.items):
                    for dtype in item_dtypes:
                        if dtype not in dtypes:
                            continue
                        run = runs[(label, tag, dtype)] = BackendRun(backend, dtype, note=KNOWN.get((backend, dtype)))
                        if p is None:
                            run.error = why
                        else:
                            stem = out / f"{i}-{dtype}"
                            _collect(run, stem, self.references[label], time.perf_counter() - t0, failure)
                            if self.gradients and stem.with_suffix(".grads.npz").is_file():
                                _compare_gradients(run, stem, self.backward(i))
        finally:
            self.close()
        return runs

    def backward(self, i: int):
        """Item i's float64 NumPy backward of L = sum_k sum(out_k * c_k), c_k = `cotangents_for` of its
        outputs (seed 0), as the child draws them: inputs and weights only (Keras has no taps to differentiate)."""
        label, cfg, w, inputs, _, _ = self.items[i]
        if label not in self._backward:
            ref = build("numpy", cfg, w, dtype="float64").gradients(
                cotangents=cotangents_for(self.references[label], 0), **inputs)
            self._backward[label] = replace(ref, activations={})
        return self._backward[label]

    def close(self) -> None:
        """Stop any subprocess still running and remove the directory (collect does it; safe to repeat)."""
        for _, _, p, stderr, _, _ in self.launched.values():
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
            if stderr is not None:
                stderr.close()
        self._tmp.cleanup()


def _collect(run: BackendRun, stem: Path, reference: dict, seconds: float, failure: str) -> None:
    """Fill `run` from the subprocess's files `stem`.json / .npz, or with `failure` where it left none."""
    meta_path = stem.with_suffix(".json")
    if not meta_path.is_file():
        run.error, run.seconds = failure, seconds
        return
    meta = json.loads(meta_path.read_text())
    run.seconds, run.device, run.precision = meta.get("seconds", 0.0), meta.get("device"), meta.get("precision", {})
    if meta.get("error"):
        run.error = f"keras on {run.backend}: {meta['error']}"
        return
    with np.load(stem.with_suffix(".npz")) as f:
        run.outputs = {k: f[k] for k in f.files}
    for attr in ("records", "module_inputs"):
        if stem.with_suffix(f".{attr}.npz").is_file():
            with np.load(stem.with_suffix(f".{attr}.npz")) as f:
                setattr(run, attr, {k: f[k] for k in f.files})
    label = f"keras[{run.backend}]/{run.dtype}"
    run.comparisons = compare_outputs(label, run.outputs, reference, run.dtype)
    run.downcasts, run.gradient_error = meta.get("downcasts", []), meta.get("gradient_error")
    if run.downcasts and (run.dtype == "float64" or meta["float64_output"]):  # asked for float64, got float32's
        run.within_float32 = compare_outputs(label, run.outputs, reference, "float32")
        run.note = run.note or KNOWN.get((run.backend, "float64"))
    if "jit" in meta:
        _compiled(run, stem, meta["jit"], reference)
    elif meta.get("jit_error"):
        run.compiled = {"mode": "jit", "error": meta["jit_error"]}
    if meta["keras_backend"] != run.backend:
        run.comparisons.append(Comparison(label, np.inf, np.inf, (), False,
                                          f"ran on keras backend {meta['keras_backend']}, expected {run.backend}"))
    want = output_dtypes(run.dtype, meta["float64_output"])
    for key, got in meta["dtypes"].items():
        if got not in want:
            run.comparisons.append(Comparison(f"{label}.{key}", np.inf, np.inf, (), False,
                                              f"computed in {got}, expected {' or '.join(want)}"))


def _compiled(run: BackendRun, stem: Path, jit: dict, reference: dict) -> None:
    """`run.compiled` from the child's jit pass: the jitted outputs against the reference, and the first
    module whose jitted output differs at all from its eager one (a module jit could not run counts)."""
    with np.load(stem.with_suffix(".jit.npz")) as f:
        outputs = {k: f[k] for k in f.files}
    # each module as it returns, then "" (the case's own top module): the jitted whole against eager, named
    # only where no submodule differs alone (the difference is in the top module's own ops, or across modules)
    modules = [(path, diff) for path, diff in jit["modules"]]
    whole = max(jit["vs_eager"].values(), default=0.0)
    differing = [(path, np.inf if d is None else d) for path, d in modules if d is None or d > 0]
    if jit.get("replayed"):
        modules.append(("", whole))
        differing = differing or ([("", whole)] if whole > 0 else [])
    run.compiled = {"mode": "jit", "vs_eager": jit["vs_eager"], "errors": jit["errors"],
                    "comparisons": compare_outputs(f"keras[{run.backend}]/{run.dtype}[jit]", outputs, reference,
                                                   run.dtype),
                    "modules": modules, "first_diverging": differing[0][0] if differing else None,
                    "largest": max(differing, key=lambda m: m[1]) if differing else None}


def _compare_gradients(run: BackendRun, stem: Path, reference) -> None:
    """`run.gradients` from the child's file, compared tensor by tensor with the NumPy backward."""
    with np.load(stem.with_suffix(".grads.npz")) as f:
        run.gradients = {k: f[k] for k in f.files}
    groups = {"input": {}, "param": {}, "activation": {}}
    for key, g in run.gradients.items():
        group, _, name = key.partition("/")
        groups[group][name] = g
    actual = Gradients(run.outputs, groups["input"], groups["param"], {}, reference.cotangents)
    rows = lambda dtype: [replace(r.result, name=f"keras[{run.backend}]/{run.dtype} {r.group} {r.op}")  # noqa: E731
                          for r in gradient_rows(reference, actual, dtype)]
    run.gradient_comparisons = rows(run.dtype)
    if run.within_float32:
        run.gradient_within_float32 = rows("float32")


def _where(keras) -> tuple[str, dict]:
    """(the device of a tensor Keras makes, the matmul precision settings) in this subprocess."""
    x = keras.ops.zeros((1,))
    device = getattr(x, "device", None)
    device = str(device() if callable(device) else device)
    precision = {}
    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        precision["jax_default_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
        device = f"{jax.devices()[0].platform}:{jax.devices()[0].id}" if device == "None" else device
    elif backend == "torch":
        import torch
        precision["torch_tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
        precision["torch_float32_matmul_precision"] = torch.get_float32_matmul_precision()
    if os.environ.get("NVIDIA_TF32_OVERRIDE") is not None:
        precision["NVIDIA_TF32_OVERRIDE"] = os.environ["NVIDIA_TF32_OVERRIDE"]
    return device, precision


def _child(directory: str, dtypes: str, out: str) -> int:
    """In the subprocess: build tf_impl on this process's Keras backend for every item and dtype and
    write each one's outputs as soon as it has them; an item that raises records its one-line error."""
    import keras

    tmp, out = Path(directory), Path(out)
    items = json.loads((tmp / "items.json").read_text())
    device, precision = _where(keras)
    for dtype in dtypes.split(","):
        for i, item in enumerate(items):
            if dtype not in item["dtypes"]:
                continue
            stem = out / f"{i}-{dtype}"
            meta = {"keras_backend": keras.backend.backend(), "keras_version": keras.__version__,
                    "device": device, "precision": precision}
            t0 = time.perf_counter()
            try:
                path = tmp / item["dir"] / "weights.safetensors"
                cfg, w = weights.load_config(path), weights.load(path)
                with np.load(tmp / item["dir"] / "inputs.npz") as f:
                    inputs = {k: f[k] for k in f.files}
                m = build("tf", cfg, w, dtype=dtype)
                with keras_passes.downcasts(keras.backend.backend()) as seen:
                    got = _forward(m, item, inputs, stem)
                np.savez(stem.with_suffix(".npz"), **{k: np.asarray(v).astype(np.float64) for k, v in got.items()})
                entry = registry.get(cfg.kind)
                meta.update(dtypes={k: str(v.dtype) for k, v in got.items()}, float64_output=entry.float64_output,
                            downcasts=sorted(seen))
                _extra_passes(m, item, inputs, got, entry, dtype, stem, meta)
            except Exception as e:  # one line for the parent; the traceback would be noise
                meta["error"] = _one_line(e)
            meta["seconds"] = time.perf_counter() - t0
            stem.with_suffix(".json").write_text(json.dumps(meta))
    return 0


def _forward(m, item, inputs, stem: Path) -> dict:
    """The outputs; asked to trace, also every tapped tensor and each module's first data input, to files."""
    if not item["trace"]:
        return m(**inputs)
    got, records = m.trace(capture="*", **inputs)
    np.savez(stem.with_suffix(".records.npz"), **{k: _float64(v) for k, v in records.items()})
    firsts = {path: next((a for a in list(args) + list(kw.values()) if _floating(a)), None)
              for path, (args, kw, _) in m.calls.items() if path}
    np.savez(stem.with_suffix(".module_inputs.npz"), **{path: _float64(a) for path, a in firsts.items() if a is not None})
    return got


def _extra_passes(m, item, inputs, got, entry, dtype, stem: Path, meta: dict) -> None:
    """Asked for them: the gradients (a differentiable entry, a dtype with a gradient row) and the jit pass
    (jax), each to its own file; one that raises records its line in `meta` and leaves the forward's."""
    import keras
    backend = keras.backend.backend()
    if item.get("gradients") and entry.differentiable and TOLERANCES[dtype].grad is not None:
        try:
            grads = keras_passes.gradients(m, inputs, cotangents_for(got, 0))
            np.savez(stem.with_suffix(".grads.npz"), **{k: _float64(g) for k, g in grads.items()})
        except Exception as e:  # noqa: BLE001  the forward's result stands
            meta["gradient_error"] = f"keras on {backend}: gradients: {_one_line(e)}"
    if item.get("jit") and backend == "jax" and dtype == "float32":  # the suite's jit row: float32
        try:
            compiled = keras_passes.jit(m, inputs, got, modules=item["jit"] == "modules", perturb=item.get("perturb"))
            np.savez(stem.with_suffix(".jit.npz"), **{k: _float64(v) for k, v in compiled.pop("outputs").items()})
            meta["jit"] = compiled
        except Exception as e:  # noqa: BLE001
            meta["jit_error"] = f"keras on {backend}: jax.jit: {_one_line(e)}"


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _floating(x) -> bool:
    return isinstance(x, np.ndarray) and (np.issubdtype(x.dtype, np.floating) or x.dtype.kind == "V")


def _float64(x) -> np.ndarray:
    """A traced tensor for the npz: floating (bfloat16's kind is "V") as float64, masks and ids as they are."""
    x = np.asarray(x)
    return x.astype(np.float64) if np.issubdtype(x.dtype, np.floating) or x.dtype.kind == "V" else x


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        sys.exit(_child(*sys.argv[1:4]))
    except Exception as e:  # one line for the parent; the traceback would be noise
        print(_one_line(e), file=sys.stderr)
        sys.exit(1)
