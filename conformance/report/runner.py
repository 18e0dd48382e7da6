"""Run every framework on one preset, one set of weights and one batch of inputs.

The CLI's `compare`, `trace` and `report` are views of what `run` returns: per
framework and dtype, the outputs, the trace, the comparison against the float64
reference, the first op out of tolerance, the parameter count and the forward time.
"""
from __future__ import annotations

import gc
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from conformance import weights
from conformance.backends import FRAMEWORKS, build, environment as framework_environment
from conformance.core.config import Config
from conformance.spec import families, presets
from conformance.compare.divergence import compare_traces
from conformance.compare.tolerance import TOLERANCES, compare_outputs


@dataclass
class Run:
    framework: str
    dtype: str
    outputs: dict
    comparisons: list
    ops: list = field(default_factory=list)  # per-op comparisons against the reference trace
    params: int = 0
    seconds: float = 0.0
    build_seconds: float = 0.0

    @property
    def passed(self):
        return all(c.passed for c in self.comparisons)

    @property
    def first_divergence(self):
        return next((c for c in self.ops if not c.passed), None)


def resolve(preset: str, weights_path: str | None, seed: int = 0) -> tuple[Config, dict, str]:
    """(config, weights, where the weights came from) for a preset and an optional weights path. The
    preset must be known either way; weights whose file or directory says what model they are (its
    config) are that model, which must be of the preset's kind."""
    named = presets.get(preset)
    if weights_path is None:
        return named, weights.initialize(named, seed=seed), f"weights.initialize(seed={seed})"
    path = Path(weights_path)
    if path.is_dir():
        (cfg, w), source = weights.from_hf(path), f"Hugging Face checkpoint {path}"
    else:
        w, cfg, source = weights.load(path), weights.load_config(path) or named, f"safetensors file {path}"
    if cfg.kind != named.kind:
        raise ValueError(f"--weights must hold a model of preset {preset!r}'s kind {named.kind!r}; received a "
                         f"{cfg.kind!r} model in {source}")
    return cfg, w, source


def model_inputs(cfg: Config, batch: int, length: int, seed: int = 0) -> dict:
    """A family's run inputs; a length past `max_positions` only where a rope scaling makes it a position."""
    if length > cfg.max_positions and not (cfg.position == "rotary" and cfg.rope_scaling != "none"):
        raise ValueError(f"--seq-len must be <= max_positions={cfg.max_positions}; received {length}")
    return families.get(cfg.kind).inputs(cfg, batch, length, seed)


SUMMARY_ABOVE_PARAMS = 200_000_000  # larger models trace in summary mode by default
SUMMARY_ABOVE_TOKENS = 4096          # so do batches of more tokens (probs grow as B H T^2)
FULL = ("*.0.attention.probs", "*.0.self_attention.probs")  # full tensors kept for the heatmaps


def run(cfg, w, inputs, frameworks, dtypes, repeats=3, progress=None, summary=None):
    """Reference trace in float64 NumPy, then each framework x dtype against it.

    Returns (reference outputs, reference trace, runs). `summary=None` picks summary mode
    for models over SUMMARY_ABOVE_PARAMS parameters or inputs over SUMMARY_ABOVE_TOKENS.
    """
    if summary is None:
        tokens = max(v.size for v in inputs.values())
        summary = weights.count(w) > SUMMARY_ABOVE_PARAMS or tokens > SUMMARY_ABOVE_TOKENS
    reference_model = build("numpy", cfg, w, dtype="float64")
    reference, reference_trace = reference_model.trace(summary=summary, full=FULL, **inputs)
    del reference_model  # its trace is all that is needed: one model in memory at a time
    gc.collect()
    runs = []
    for framework in frameworks:
        for dtype in dtypes:
            if (framework, dtype) == ("numpy", "float64"):
                continue  # the reference itself
            if progress:
                progress(f"{framework} {dtype}")
            t0 = time.perf_counter()
            m = build(framework, cfg, w, dtype=dtype)
            built = time.perf_counter() - t0
            out, tr = m.trace(summary=summary, **inputs)
            m(**inputs)  # warm-up untraced
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                m(**inputs)
                times.append(time.perf_counter() - t0)
            runs.append(Run(framework, dtype, out, compare_outputs(framework, out, reference, dtype),
                            compare_traces(reference_trace, tr, dtype), m.num_parameters(),
                            float(np.median(times)), built))
            del m, tr  # freed before the next framework's model is built
            gc.collect()
    return reference, reference_trace, runs


def environment(seed: int, fingerprint: str, source: str, frameworks=FRAMEWORKS) -> dict:
    """Everything that changes the last bits, recorded in every report: versions, threads, oneDNN and
    every TF32 flag, from each framework's backend."""
    import scipy
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),  # timings taken under load are not comparable
        "numpy": np.__version__, "scipy": scipy.__version__,
        **framework_environment(frameworks),
        "device": "cpu",
        "seed": seed,
        "weights": source,
        "weights_fingerprint": fingerprint,
        "tolerances": {k: {"atol": t.atol, "rtol": t.rtol} for k, t in TOLERANCES.items()},
    }
