"""tf_impl on Keras's other backends, as extra columns: the same layers under KERAS_BACKEND=torch.

    runs = keras_backend_runs(cfg, w, inputs, backends=("torch",))
    runs["torch"].passed, runs["torch"].comparisons      # against the float64 NumPy reference

Keras fixes its backend once, when it is first imported, from KERAS_BACKEND: a process that
has imported Keras on TensorFlow cannot switch. So each backend runs in its own subprocess
(`python -m conformance.compare.keras_backends DIR DTYPE`), fed the canonical weights (safetensors,
with the config in the metadata) and the inputs (npz) through a temporary directory; its
outputs come back as npz and the parent compares them through the one tolerance table.

Backends: "tensorflow" (the default, for symmetry), "torch", "jax". JAX is not installed in
this environment (on purpose: the project pins TensorFlow and PyTorch), so a "jax" run
reports that instead of running.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from conformance import weights
from conformance.backends import backend as framework_backend, build
from conformance.backends.dtypes import output_dtypes
from conformance.compare.tolerance import Comparison, compare_outputs
from conformance.spec import registry

BACKENDS = ("tensorflow", "torch", "jax")
ROOT = Path(__file__).resolve().parent.parent
# (backend, dtype) -> a known limitation of Keras itself, attached to the run as its `note`
KNOWN = {
    ("torch", "float64"):
        "Keras 3 computes ops.matmul and ops.maximum in float32 on the torch backend: "
        "keras/src/backend/common/dtypes.py result_type maps every 64-bit result type to 32-bit "
        "('aligned with JAX'), and keras/src/backend/torch/numpy.py matmul and maximum cast to it "
        "(the TensorFlow backend does not); tf_impl calls them at linear.py:15, attention.py:36 and :38, "
        "activations.py:29 (relu), bert.py:45, gpt2.py:59 and transformer.py:57, so float64 is float32 there",
}


@dataclass
class BackendRun:
    backend: str
    dtype: str
    outputs: dict = field(default_factory=dict)
    comparisons: list = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    note: str | None = None  # a known Keras limitation for this backend and dtype (`KNOWN`)

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.comparisons) and all(c.passed for c in self.comparisons)


def unavailable(backend: str) -> str | None:
    """Why `backend` cannot run here, or None."""
    if backend not in BACKENDS:
        return f"keras backend must be one of {list(BACKENDS)}; received {backend!r}"
    module = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}[backend]
    if importlib.util.find_spec(module) is None:
        return (f"{module} is not installed in this environment (not installed on purpose: the project "
                f"pins tensorflow and torch), so Keras cannot run on the {backend} backend")
    return None


def keras_backend_runs(cfg, w: dict, inputs: dict, backends=("torch",), dtype: str = "float32",
                       reference: dict | None = None, timeout: float = 600) -> dict[str, BackendRun]:
    """Run tf_impl on each Keras backend in a subprocess; compare with the float64 reference.

    Returns {backend: BackendRun}; a backend that cannot run, or whose subprocess fails, has
    `error` set (one line) and no comparisons.
    """
    framework_backend("tf").require(dtype)
    if reference is None:
        reference = build("numpy", cfg, w, dtype="float64")(**inputs)
    runs = {}
    for backend in backends:
        run = runs[backend] = BackendRun(backend, dtype, note=KNOWN.get((backend, dtype)))
        run.error = unavailable(backend)
        if run.error:
            continue
        with tempfile.TemporaryDirectory(prefix="tmirror-keras-") as tmp:
            tmp = Path(tmp)
            weights.save(w, tmp / "weights.safetensors", cfg)
            np.savez(tmp / "inputs.npz", **{k: np.asarray(v) for k, v in inputs.items()})
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
                   "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
            t0 = time.perf_counter()
            try:
                p = subprocess.run([sys.executable, "-m", "conformance.compare.keras_backends", str(tmp), dtype],
                                   capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
            except subprocess.TimeoutExpired:
                run.error = f"keras on {backend}: no result within {timeout:g} s"
                continue
            run.seconds = time.perf_counter() - t0
            if p.returncode != 0:
                lines = [line for line in p.stderr.strip().splitlines() if line.strip()]
                run.error = f"keras on {backend}: " + (lines[-1] if lines else f"exit status {p.returncode}")
                continue
            meta = json.loads((tmp / "meta.json").read_text())
            with np.load(tmp / "outputs.npz") as f:
                run.outputs = {k: f[k] for k in f.files}
        label = f"keras[{backend}]/{dtype}"
        run.comparisons = compare_outputs(label, run.outputs, reference, dtype)
        if meta["keras_backend"] != backend:
            run.comparisons.append(Comparison(label, np.inf, np.inf, (), False,
                                              f"ran on keras backend {meta['keras_backend']}, expected {backend}"))
        want = output_dtypes(dtype, meta["float64_output"])
        for key, got in meta["dtypes"].items():
            if got not in want:
                run.comparisons.append(Comparison(f"{label}.{key}", np.inf, np.inf, (), False,
                                                  f"computed in {got}, expected {' or '.join(want)}"))
    return runs


def _child(directory: str, dtype: str) -> int:
    """In the subprocess: build tf_impl on this process's Keras backend and write its outputs."""
    import keras

    tmp = Path(directory)
    cfg = weights.load_config(tmp / "weights.safetensors")
    w = weights.load(tmp / "weights.safetensors")
    with np.load(tmp / "inputs.npz") as f:
        inputs = {k: f[k] for k in f.files}
    out = build("tf", cfg, w, dtype=dtype)(**inputs)
    dtypes = {k: str(v.dtype) for k, v in out.items()}
    np.savez(tmp / "outputs.npz", **{k: np.asarray(v).astype(np.float64) for k, v in out.items()})
    (tmp / "meta.json").write_text(json.dumps({
        "keras_backend": keras.backend.backend(), "dtypes": dtypes,
        "float64_output": registry.get(cfg.kind).float64_output}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        sys.exit(_child(*sys.argv[1:3]))
    except Exception as e:  # one line for the parent; the traceback would be noise
        print(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        sys.exit(1)
