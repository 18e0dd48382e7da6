"""Precision as a harness dimension: dtype policies, TF32, float16 overflow, measured tolerances.

Dtypes (`build(..., dtype=...)`):

| dtype | weights | compute | outputs | frameworks |
|---|---|---|---|---|
| float64, float32 | same | same | same | numpy, torch, tf |
| bfloat16, float16 | same | same | same | torch, tf (numpy: see `UNSUPPORTED`) |
| mixed_bfloat16, mixed_float16 | float32 | the low dtype | low or float32 | torch (autocast), tf (Keras policy) |
| tf32 | float32 | matmul operands rounded to TF32 | float32 | torch: cuda, or emulated on cpu |

The NumPy reference always runs in float64. A float16 run whose outputs go non-finite is
never handed back: `check_finite` re-runs it traced and raises `NonFiniteError` naming the
first op that overflowed (`first_nonfinite`).

TF32 (NVIDIA Ampere and later) rounds matmul inputs to a 10-bit mantissa and accumulates in
float32. TensorFlow enables it by default on such GPUs; PyTorch does not for matmuls
(`torch.backends.cuda.matmul.allow_tf32 = False`, precision "highest") but does for cuDNN
convolutions. `precision_environment()` records every flag; `tf32_cause` names TF32 as the
cause of a failing cross-framework comparison when the flags differ and the error looks like it.
In this harness torch float32 on cuda runs with TF32 forced off, and dtype "tf32" forced on.

Tolerances are measured, not guessed: `measure` runs every registry case (and its traced ops)
in each framework and dtype against the float64 reference, in three weight regimes, and
`tolerance_rows` turns the worst error into a table row with stated headroom.
`tmirror tolerances` writes the evidence (conformance/compare/tolerance_evidence.json) and a
Markdown table (reports/tolerances.md); `conformance.compare.tolerance.TOLERANCES` cites them.
"""
from __future__ import annotations

import contextlib
import math
import platform
import re
import time
from dataclasses import dataclass

import numpy as np

DTYPES = ("float64", "float32", "tf32", "bfloat16", "float16", "mixed_bfloat16", "mixed_float16")
LOW = ("bfloat16", "float16")
MIXED = ("mixed_bfloat16", "mixed_float16")
FLOAT16_MAX = 65504.0

# framework -> the dtypes and devices it runs in this harness
SUPPORT = {
    "numpy": {"dtypes": ("float64", "float32"), "devices": ("cpu",)},
    "torch": {"dtypes": DTYPES, "devices": ("cpu", "cuda")},
    "tf": {"dtypes": tuple(d for d in DTYPES if d != "tf32"), "devices": ("cpu",)},
}
UNSUPPORTED = {
    ("numpy", "float16"): "scipy.special.erf has no float16 loop (returns float64), so numpy_ref's exact "
                          "GELU leaves float16 (numpy_ref/activations.py gelu)",
    ("numpy", "bfloat16"): "ml_dtypes bfloat16 matmul returns float32 and a Python-float scalar promotes "
                           "bfloat16 arrays to float32, so numpy_ref cannot stay in bfloat16",
    ("numpy", "mixed_bfloat16"): "NumPy has no autocast",
    ("numpy", "mixed_float16"): "NumPy has no autocast",
    ("numpy", "tf32"): "TF32 is a GPU matmul mode",
    ("tf", "tf32"): "TF32 is a GPU mode and the tf framework runs on cpu only in this harness",
}


# ------------------------------------------------------------------------------ dtype policy

def parameter_dtype(dtype: str) -> str:
    """The dtype weights (and float inputs) are stored in."""
    return "float32" if dtype in MIXED or dtype == "tf32" else dtype


def compute_dtype(dtype: str) -> str:
    return dtype.removeprefix("mixed_") if dtype in MIXED else parameter_dtype(dtype)


def output_dtypes(dtype: str, float64_output: bool = False) -> tuple[str, ...]:
    """The dtypes an output may come back in: autocast keeps some ops (layer norm) in float32."""
    if float64_output:
        return ("float64",)
    if dtype in MIXED:
        return (compute_dtype(dtype), "float32")
    return (parameter_dtype(dtype),)


def numpy_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def cast_input(x, dtype: str):
    """A float input in the dtype the framework is fed (integers and bools unchanged)."""
    x = np.asarray(x)
    if x.dtype.kind == "f" or x.dtype.name == "bfloat16":
        return x.astype(numpy_dtype(parameter_dtype(dtype)))
    return x


def torch_tensor(x, dtype: str, device: str):
    import torch
    x = cast_input(x, dtype)
    if x.dtype.name == "bfloat16":  # torch.from_numpy does not know ml_dtypes: exact via float32
        return torch.from_numpy(x.astype(np.float32)).to(device=device, dtype=torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def torch_to_numpy(x) -> np.ndarray:
    """A torch tensor as NumPy; bfloat16 stays bfloat16 (ml_dtypes), as Keras returns it."""
    import torch
    x = x.detach().cpu()
    if x.dtype == torch.bfloat16:
        return x.float().numpy().astype(numpy_dtype("bfloat16"))
    return x.numpy()


def supported(framework: str, dtype: str, device: str | None = "cpu", case=None) -> bool:
    return why_unsupported(framework, dtype, device, case) is None


def why_unsupported(framework: str, dtype: str, device: str | None = "cpu", case=None) -> str | None:
    """None if `framework` runs `case` ((entry name, variant) or None) in `dtype` on `device`
    (device None: any device)."""
    support = SUPPORT[framework]
    if dtype not in support["dtypes"]:
        return UNSUPPORTED.get((framework, dtype), f"{framework} does not run {dtype}")
    if device is not None and device not in support["devices"]:
        return f"the {framework} framework runs on {list(support['devices'])} only in this harness"
    if case is not None:
        from conformance.spec import registry
        name, variant = case
        entry = registry.get(name)
        if entry.dtypes is not None and dtype not in entry.dtypes:
            return f"{name} declares dtypes {list(entry.dtypes)}"
        frameworks = entry.variants[variant].frameworks
        if frameworks is not None and framework not in frameworks:
            return f"{name}[{variant}] is declared for {list(frameworks)} only"
    return None


def require(framework: str, dtype: str, device: str | None = None) -> None:
    why = why_unsupported(framework, dtype, device)
    if why:
        raise ValueError(f"{framework} does not support dtype={dtype!r}"
                         f"{'' if device is None else f' on device={device!r}'}: {why}")


@contextlib.contextmanager
def policy(built):
    """Everything a call of `built` needs beyond its weights' dtype, for the length of the call.

    torch: mixed dtypes run under
    `torch.autocast`; on cuda TF32 is forced off for float32 and on for tf32 (and the flags
    restored after); tf32 on cpu is `TF32Emulation`. Keras mixed dtypes need nothing here:
    the layers' dtype policy does it.
    """
    if built.framework != "torch":
        yield
        return
    import torch
    device, dtype = built.device, built.dtype
    with contextlib.ExitStack() as stack:
        if dtype in MIXED:
            stack.enter_context(torch.autocast(device_type=device, dtype=getattr(torch, compute_dtype(dtype))))
        if device == "cuda" and dtype in ("float32", "tf32") + MIXED:
            stack.enter_context(_torch_tf32(dtype == "tf32"))
        elif dtype == "tf32":
            stack.enter_context(TF32Emulation())
        yield


@contextlib.contextmanager
def _torch_tf32(on: bool):
    import torch
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    torch.set_float32_matmul_precision("high" if on else "highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


# ------------------------------------------------------------------------------ TF32

TF32_UNIT_ROUNDOFF = 2.0 ** -11  # 10 stored mantissa bits, round to nearest


def round_to_tf32(x):
    """float32 values rounded to TF32 (10-bit mantissa, round to nearest even); NumPy or torch."""
    if isinstance(x, np.ndarray) or np.isscalar(x):
        bits = np.asarray(x, np.float32).view(np.uint32)
        rounded = (bits + np.uint32(0xFFF) + ((bits >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
        finite = np.isfinite(np.asarray(x, np.float32))
        return np.where(finite, rounded.view(np.float32), np.asarray(x, np.float32))
    import torch
    bits = x.contiguous().view(torch.int32)
    rounded = ((bits + 0xFFF + ((bits >> 13) & 1)) & -0x2000).view(torch.float32)
    return torch.where(torch.isfinite(x), rounded, x)


def _tf32_mode_class():
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    matmuls = {torch.matmul: (0, 1), torch.Tensor.matmul: (0, 1), torch.Tensor.__matmul__: (0, 1),
               torch.Tensor.__rmatmul__: (0, 1), torch.mm: (0, 1), torch.bmm: (0, 1),
               torch.addmm: (1, 2), torch.baddbmm: (1, 2), F.linear: (0, 1),
               F.scaled_dot_product_attention: (0, 1, 2)}

    class _TF32Emulation(TorchFunctionMode):
        """Rounds the float32 operands of every matmul to TF32 before it runs: TF32 on a CPU.

        Real tensor cores round (or truncate) the same operands and accumulate in float32, so
        this reproduces TF32's error to within its rounding rule. Inside fused SDPA only q, k, v
        are rounded (not the probabilities), so fused attention is slightly optimistic.
        """

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            positions = matmuls.get(func)
            if positions:
                args = tuple(round_to_tf32(a) if i in positions and isinstance(a, torch.Tensor)
                             and a.dtype == torch.float32 else a for i, a in enumerate(args))
            return func(*args, **kwargs)

    return _TF32Emulation


def TF32Emulation():  # noqa: N802 (a class, built lazily so importing this module needs no torch)
    return _tf32_mode_class()()


def precision_environment() -> dict:
    """Every flag that decides how float32 matmuls round, in torch and TensorFlow."""
    import torch
    env = {
        "torch_tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "torch_tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
        "torch_cuda_available": bool(torch.cuda.is_available()),
    }
    fp32 = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if fp32 is not None:
        env["torch_cuda_matmul_fp32_precision"] = str(fp32)
    capability = None
    if env["torch_cuda_available"]:
        capability = torch.cuda.get_device_capability()
        env["cuda_device"] = torch.cuda.get_device_name()
        env["cuda_capability"] = f"{capability[0]}.{capability[1]}"
    env["tf32_capable_gpu"] = bool(capability and capability >= (8, 0))
    env["torch_tf32_effective"] = env["tf32_capable_gpu"] and (
        env["torch_tf32_matmul"] or env["torch_float32_matmul_precision"] != "highest")
    try:
        import tensorflow as tf
        env["tf_tf32"] = bool(tf.config.experimental.tensor_float_32_execution_enabled())
        env["tf_gpus"] = len(tf.config.list_physical_devices("GPU"))
        env["tf_tf32_effective"] = env["tf32_capable_gpu"] and env["tf_gpus"] > 0 and env["tf_tf32"]
    except ImportError:
        env["tf_tf32"] = None
    return env


MATMUL_TAPS = {"scores", "context", "logits", "start_logits", "end_logits", "pooled"}
LINEAR_PATHS = {"query", "key", "value", "output", "inner", "outer", "transform", "pooler", "classifier",
                "qa", "output_projection"}


def is_matmul_op(name: str) -> bool:
    """Is the traced op `name` the result of a matmul (where TF32 rounds), by its tap name?"""
    name = re.sub(r"#\d+$", "", name)
    path, _, tap = name.rpartition(".")
    return tap in MATMUL_TAPS or (tap == "output" and path.rpartition(".")[2] in LINEAR_PATHS)


def tf32_cause(flags: dict, failing) -> str | None:
    """Name TF32 as the cause of a failing comparison between two runs, or say why not.

    flags: {run label: TF32 on?} for the two runs, e.g. {"tf": True, "torch": False} (from
    `precision_environment()`'s `*_tf32_effective`). failing: a `Comparison`, or the per-op
    comparisons of a trace in execution order. Returns None when TF32 cannot be involved
    (off in both runs, or nothing failed).
    """
    comparisons = failing if isinstance(failing, (list, tuple)) else [failing]
    first = next((c for c in comparisons if not c.passed), None)
    on = [label for label, flag in flags.items() if flag]
    off = [label for label, flag in flags.items() if not flag]
    if first is None or not on:
        return None
    pattern = _tf32_pattern(first)
    if off:
        state = f"TF32 on in {', '.join(on)}, off in {', '.join(off)}"
        if pattern is None:
            scale = getattr(first, "scale", float("nan"))
            size = f"max-norm rel {first.max_abs / scale:.1e}" if scale > 0 else f"max rel {first.max_rel:.1e}"
            return (f"{state}: matmul inputs rounded to 10-bit mantissa; first divergence at {first.name} "
                    f"({size}) matches TF32 rounding (unit roundoff {TF32_UNIT_ROUNDOFF:.1e} at a matmul): "
                    f"turn TF32 off in {', '.join(on)} to confirm")
        return f"{state}, but the error does not look like TF32 ({pattern}): look for another cause"
    return (f"TF32 on in both ({', '.join(on)}): each rounds matmul inputs to a 10-bit mantissa, so "
            f"compare each against the float64 reference with the tf32 row"
            + ("" if pattern is None else f"; the error does not look like TF32 either ({pattern})"))


def _tf32_pattern(c) -> str | None:
    """None if comparison `c` looks like TF32 rounding, else what does not fit.

    At the first op it reaches, TF32 moves a matmul's result by about its unit roundoff times a
    small factor, relative to the tensor's scale: between 1e-6 and 5e-2 of max |reference|
    (the comparison's elementwise max_rel when the scale is unknown). A real bug there (a
    transposed kernel, a missing scale, a shifted mask) moves it by order one.
    """
    if not math.isfinite(c.max_abs):
        return f"non-finite values at {c.name}"
    if not is_matmul_op(c.name):
        return f"first divergence at {c.name}, not the output of a matmul"
    scale = getattr(c, "scale", float("nan"))
    rel, what = (c.max_abs / scale, "max-norm rel") if scale > 0 else (c.max_rel, "max rel")
    if rel > 5e-2:
        return f"{what} {rel:.1e} at {c.name}, far above TF32 rounding"
    if rel < 1e-6:
        return f"{what} {rel:.1e} at {c.name}, far below TF32 rounding"
    return None


# ------------------------------------------------------------------------------ overflow

class NonFiniteError(ValueError):
    """A low-precision run produced inf/NaN from finite inputs: names the first op it happened at."""

    def __init__(self, message, op=None, count=0):
        super().__init__(message)
        self.op, self.count = op, count


def _nonfinite_count(record) -> int:
    if hasattr(record, "nonfinite"):  # trace.Summary
        return int(record.nonfinite)
    a = np.asarray(record)
    if a.dtype.kind not in "fc" and a.dtype.name != "bfloat16":
        return 0
    return int(a.size - np.count_nonzero(np.isfinite(a)))


def traced(built, inputs: dict) -> tuple[dict, dict]:
    """`built.trace(**inputs)` for any input names (`Built.trace`'s own keywords would swallow
    inputs named like them), with the same float16 overflow check."""
    from conformance.core import trace
    with trace.recording(built.backend.named_modules(built.module), built.backend.to_numpy) as t:
        out = built(**inputs)
    check_finite(built, inputs, out, t.records)
    return out, t.records


def first_nonfinite(trace_records: dict) -> tuple[str, int] | None:
    """(op name, count of non-finite values) of the first record, in execution order, holding
    inf or NaN; None if every record is finite."""
    for name, record in trace_records.items():
        count = _nonfinite_count(record)
        if count:
            return name, count
    return None


def _abs_max(record) -> float:
    if hasattr(record, "abs_max"):
        return float(record.abs_max)
    a = np.asarray(record).astype(np.float64)
    a = a[np.isfinite(a)]
    return float(np.abs(a).max()) if a.size else 0.0


def check_finite(built, inputs: dict, outputs: dict, records: dict | None = None) -> None:
    """Raise `NonFiniteError` if a bfloat16/float16 run turned finite inputs into inf/NaN outputs.

    Without `records` (an untraced call) the call is re-run traced to find the op; inside a
    trace the enclosing `Built.trace` passes its records. Other dtypes pass through: float32/64
    overflow is left to the comparison with the reference.
    """
    dtype = compute_dtype(built.dtype)
    if dtype not in LOW or not getattr(built, "check_finite", True):
        return
    bad = {k: _nonfinite_count(v) for k, v in outputs.items()}
    bad = {k: n for k, n in bad.items() if n}
    if not bad or any(_nonfinite_count(v) for v in inputs.values()):
        return
    if records is None:
        from conformance.core import trace
        if trace._active is not None:
            return  # the enclosing trace checks, with its records
        traced(built, inputs)  # raises below, with the records
        records = {}
    hit = first_nonfinite(records)
    names = list(records)
    where = "an op the trace does not tap"
    if hit:
        where = f"{hit[0]} ({hit[1]} values)"
        before = names[names.index(hit[0]) - 1] if names.index(hit[0]) else None
        if before:
            where += f"; the op traced before it, {before}, reached |x| = {_abs_max(records[before]):.3g}"
    limit, instead = (f"float16 max {FLOAT16_MAX:g}", "bfloat16 or float32") if dtype == "float16" \
        else ("bfloat16 max 3.39e38", "float32")
    raise NonFiniteError(
        f"{built.framework} {built.dtype}: {sum(bad.values())} non-finite values in outputs "
        f"{sorted(bad)} from finite inputs; first non-finite op: {where}. Overflow past {limit}: "
        f"run in {instead}, or rescale the inputs", hit[0] if hit else None, hit[1] if hit else 0)


# ------------------------------------------------------------------------------ measurement

REGIMES = {
    "suite": "the generated suite's own case: weights std 0.5 (components) / 0.02 (models), seed 0",
    "bert": "BERT-like scale: every weight std 0.02, seed 1",
    "stress": "stress scale: every weight std 0.5, seed 2 (reported against the rows, not fitted)",
}
FIT = ("suite", "bert")  # regimes the rows are fitted to, with every preset measured ("preset:NAME")
REL_FLOOR = 1e-3  # relative error is reported over elements with |ref| >= REL_FLOOR * max |ref|
STATS = ("max_abs", "p99_abs", "mean_abs", "max_rel", "p99_rel", "mean_rel", "needed", "norm_rel")
# Rows of these dtypes bound the max-norm relative error max |a - r| / max |r| of each tensor
# (Tolerance.scale_rtol); float64 / float32 rows bound each element (atol = rtol). See `metric`.
NORMWISE = ("tf32",) + LOW + MIXED


def metric(dtype: str) -> str:
    """The error statistic a dtype's tolerance row bounds: "norm_rel" or "needed"."""
    return "norm_rel" if dtype in NORMWISE else "needed"


def bound(tol) -> float:
    """The value of `metric` a `Tolerance` row allows."""
    return tol.scale_rtol if tol.scale_rtol else min(tol.atol, tol.rtol)


def error_stats(actual, reference) -> dict:
    """Distribution of |actual - reference| and of the relative error; `needed`, the smallest t with
    atol = rtol = t that passes (max |a - r| / (1 + |r|)); `norm_rel`, max |a - r| / max |r|."""
    a = np.asarray(actual).astype(np.float64)
    r = np.asarray(reference).astype(np.float64)
    if a.shape != r.shape:
        raise ValueError(f"shape {a.shape} against reference shape {r.shape}")
    both = np.isfinite(a) & np.isfinite(r)
    nonfinite = int(np.count_nonzero(np.isfinite(r) & ~np.isfinite(a)))
    err = np.abs(a[both] - r[both])
    ref = np.abs(r[both])
    stats = {"size": int(a.size), "nonfinite": nonfinite}
    if err.size == 0:
        return {**stats, **dict.fromkeys(STATS, 0.0 if not nonfinite else math.inf)}
    scale = float(ref.max())
    sig = ref >= REL_FLOOR * scale if scale > 0 else np.zeros_like(ref, bool)
    rel = err[sig] / ref[sig] if sig.any() else np.zeros(1)
    norm_rel = float(err.max()) / scale if scale > 0 else (0.0 if err.max() == 0 else math.inf)
    stats.update(max_abs=float(err.max()), p99_abs=float(np.percentile(err, 99)), mean_abs=float(err.mean()),
                 max_rel=float(rel.max()), p99_rel=float(np.percentile(rel, 99)), mean_rel=float(rel.mean()),
                 needed=math.inf if nonfinite else float((err / (1.0 + ref)).max()),
                 norm_rel=math.inf if nonfinite else norm_rel)
    return stats


def op_kind(name: str, kinds: dict) -> str:
    """"encoder.1.attention.scores#1" -> "MultiHeadAttention.scores": the tapping module's class."""
    name = re.sub(r"#\d+$", "", name)
    path, _, tap = name.rpartition(".")
    return f"{kinds.get(path, '?')}.{tap}"


def regime_data(name: str, variant: str, regime: str):
    """(entry, cfg, weights, inputs) of one registry case in one weight regime."""
    from conformance.spec import registry
    from conformance import weights
    from conformance.suites.cases import case_data
    if regime == "suite":
        entry, cfg, w, inputs, _ = case_data(name, variant)
        return entry, cfg, w, inputs
    seed, std = {"bert": (1, 0.02), "stress": (2, 0.5)}[regime]
    entry = registry.get(name)
    cfg = entry.config(variant)
    return entry, cfg, weights.initialize(cfg, seed=seed, std=std), entry.inputs(cfg, variant, seed=seed)


@dataclass
class Measured:
    regime: str
    case: str
    framework: str
    dtype: str
    device: str
    outputs: dict   # output key -> error_stats against the float64 reference
    ops: dict       # op kind -> list of error_stats (one per traced tensor of that kind)
    agreement: dict = None  # device != cpu: output key -> error_stats(this device, cpu), same framework
    error: str | None = None
    seconds: float = 0.0


def _measure(label, regime, cfg, w, inputs, frameworks, dtypes, device, case=None) -> list[Measured]:
    """The float64 reference trace once, then each supported framework x dtype traced against it
    (outputs and every traced op); on another device also the cpu run of the same framework."""
    from conformance.backends.build import build
    ref_model = build("numpy", cfg, w, dtype="float64")
    reference, ref_trace = traced(ref_model, inputs)
    kinds = {path: type(m).__name__ for path, m in ref_model.backend.named_modules(ref_model.module)}
    results = []
    for framework in frameworks:
        for dtype in dtypes:
            if (framework, dtype) == ("numpy", "float64") or not supported(framework, dtype, device, case):
                continue
            m = Measured(regime, label, framework, dtype, device, {}, {})
            t0 = time.perf_counter()
            try:
                out, tr = traced(build(framework, cfg, w, device=device, dtype=dtype), inputs)
                m.outputs = {k: error_stats(out[k], reference[k]) for k in reference}
                for op in ref_trace:
                    if op in tr:  # fused attention records no scores / probs
                        m.ops.setdefault(op_kind(op, kinds), []).append(error_stats(tr[op], ref_trace[op]))
                if device != "cpu":
                    cpu = build(framework, cfg, w, device="cpu", dtype=dtype)(**inputs)
                    m.agreement = {k: error_stats(out[k], cpu[k]) for k in cpu}
            except NonFiniteError as e:
                m.error = str(e)
            m.seconds = time.perf_counter() - t0
            results.append(m)
    return results


def measure_case(name, variant, regime, frameworks, dtypes, device="cpu") -> list[Measured]:
    from conformance.suites.cases import case_id
    _, cfg, w, inputs = regime_data(name, variant, regime)
    return _measure(case_id((name, variant)), regime, cfg, w, inputs, frameworks, dtypes, device,
                    (name, variant))


def measure_preset(preset, frameworks, dtypes, device="cpu", batch=1, seq_len=128) -> list[Measured]:
    """A full-size preset with its seeded weights (std 0.02), as `tmirror report` runs it."""
    from conformance.spec import presets
    from conformance.report import runner
    from conformance import weights
    cfg = presets.get(preset)
    w = weights.initialize(cfg, seed=0)
    inputs = runner.model_inputs(cfg, batch, seq_len, 0)
    return _measure(preset, f"preset:{preset}", cfg, w, inputs, frameworks, dtypes, device)


def measure(dtypes, frameworks=("torch", "tf"), device="cpu", regimes=tuple(REGIMES), cases=None,
            presets=(), progress=None) -> list[Measured]:
    """Every registry case (or `cases`) in every regime, then every preset in `presets`."""
    from conformance.suites.cases import CASES
    results = []
    for regime in regimes:
        for name, variant in cases or CASES:
            if progress:
                progress(f"{regime} {name}[{variant}]")
            results += measure_case(name, variant, regime, frameworks, dtypes, device)
    for preset in presets:
        if progress:
            progress(f"preset {preset}")
        results += measure_preset(preset, frameworks, dtypes, device)
    return results


def device_agreement(name, variant, framework, dtype, devices=("cpu", "cuda"), regime="suite") -> dict:
    """The same framework and dtype on two devices, compared the same way as against the
    reference: output key -> error_stats(second device, first device)."""
    from conformance.backends.build import build
    _, cfg, w, inputs = regime_data(name, variant, regime)
    first, second = (build(framework, cfg, w, device=d, dtype=dtype)(**inputs) for d in devices)
    return {k: error_stats(second[k], first[k]) for k in first}


def _merge(stats: list[dict]) -> dict:
    """Worst case over many error_stats: max of maxima and p99s, size-weighted mean of means."""
    size = sum(s["size"] for s in stats) or 1
    out = {"size": size, "nonfinite": sum(s["nonfinite"] for s in stats)}
    for key in ("max_abs", "p99_abs", "max_rel", "p99_rel", "needed", "norm_rel"):
        out[key] = max(s[key] for s in stats)
    for key in ("mean_abs", "mean_rel"):
        out[key] = sum(s[key] * s["size"] for s in stats) / size
    return out


def _worst(results, key):
    """(worst value of `key` over every output and traced op, where); (0.0, None) if none."""
    best, where = 0.0, None
    for m in results:
        if m.error:
            continue
        for out, s in m.outputs.items():
            if s[key] > best:
                best, where = s[key], f"{m.framework} {m.case}.{out} ({m.regime})"
        for kind, many in m.ops.items():
            for s in many:
                if s[key] > best:
                    best, where = s[key], f"{m.framework} {m.case} op {kind} ({m.regime})"
    return best, where


def _nice_ceil(x: float) -> float:
    """The smallest of 1, 2, 5 x 10^k that is >= x."""
    if x <= 0:
        return 0.0
    k = math.floor(math.log10(x))
    for step in (1, 2, 5, 10):
        if step * 10.0 ** k >= x * (1 - 1e-12):
            return float(f"{step * 10.0 ** k:.0e}")
    return 10.0 ** (k + 1)


HEADROOM = 4.0  # a proposed row is the worst fitted value x HEADROOM, rounded up to 1/2/5


def tolerance_rows(results: list[Measured], table: dict | None = None) -> dict:
    """dtype -> the proposed row and its evidence: the worst value of the dtype's `metric` over
    every output and traced op of every case, framework and fitted regime (`FIT` and presets),
    where it occurred, the stress regime's worst, and how the current `table` row compares."""
    rows = {}
    for dtype in dict.fromkeys(m.dtype for m in results):
        key = metric(dtype)
        mine = [m for m in results if m.dtype == dtype]
        fit = [m for m in mine if m.regime != "stress"]
        worst, where = _worst(fit, key)
        worst_out, _ = _worst([Measured(m.regime, m.case, m.framework, m.dtype, m.device, m.outputs, {})
                               for m in fit], key)
        stress, stress_at = _worst([m for m in mine if m.regime == "stress"], key)
        proposed = _nice_ceil(worst * HEADROOM)
        row = {"metric": key, "worst": worst, "worst_at": where, "worst_output": worst_out,
               "proposed": proposed, "stress_worst": stress, "stress_at": stress_at,
               "overflows": sorted({f"{m.framework} {m.case} ({m.regime}): {m.error.split(';')[0]}"
                                    for m in mine if m.error})}
        current = (table or {}).get(dtype)
        if current is not None:
            b = bound(current)
            row.update(current={"atol": current.atol, "rtol": current.rtol, "scale_rtol": current.scale_rtol},
                       current_bound=b, covered=worst <= b, headroom=b / worst if worst else math.inf,
                       stress_covered=stress <= b)
        rows[dtype] = row
    return rows


def summarize(results: list[Measured]) -> dict:
    """{dtype: {framework: {"outputs": stats, "ops": {op kind: stats}}}} over all cases and regimes,
    and "cpu_vs_<device>" for runs on another device."""
    out: dict = {}
    for m in results:
        if m.error:
            continue
        slot = out.setdefault(m.dtype, {}).setdefault(m.framework, {"outputs": [], "ops": {}, "agreement": []})
        slot["outputs"] += list(m.outputs.values())
        slot["agreement"] += list((m.agreement or {}).values())
        for kind, many in m.ops.items():
            slot["ops"].setdefault(kind, []).extend(many)
    summary = {}
    for d, fws in out.items():
        for f, s in fws.items():
            entry = {"outputs": _merge(s["outputs"]), "ops": {k: _merge(v) for k, v in sorted(s["ops"].items())}}
            if s["agreement"]:
                entry["device_agreement"] = _merge(s["agreement"])
            summary.setdefault(d, {})[f] = entry
    return summary


def _round(x):
    if isinstance(x, float):
        return x if not math.isfinite(x) or x == 0 else float(f"{x:.3g}")
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


CASE_COLUMNS = ["regime", "case", "framework", "dtype", "device", "worst output needed",
                "worst output norm_rel", "error"]


def evidence(results: list[Measured], command: str, table: dict) -> dict:
    """The JSON evidence: environment, proposed rows against the current table, summaries, cases."""
    import torch
    env = {"python": platform.python_version(), "platform": platform.platform(), "numpy": np.__version__,
           "torch": torch.__version__, "torch_threads": torch.get_num_threads(), **precision_environment()}
    try:
        import keras
        import tensorflow as tf
        env.update(tensorflow=tf.__version__, keras=keras.__version__)
    except ImportError:
        pass
    cases = [[m.regime, m.case, m.framework, m.dtype, m.device,
              max((s["needed"] for s in m.outputs.values()), default=None),
              max((s["norm_rel"] for s in m.outputs.values()), default=None), m.error] for m in results]
    return _round({"schema": 1, "command": command, "environment": env, "regimes": REGIMES,
                   "fitted_regimes": list(FIT) + sorted({m.regime for m in results if m.regime.startswith("preset:")}),
                   "metric": "needed = max |a - r| / (1 + |r|), the smallest t with atol = rtol = t that "
                             "passes (float64, float32 rows); norm_rel = max |a - r| / max |r| per tensor, "
                             "the max-norm relative error (tf32, bfloat16, float16, mixed rows: scale_rtol); "
                             f"rel = |a - r| / |r| over |r| >= {REL_FLOOR:g} max |r|; p99 = the largest "
                             "per-tensor 99th percentile",
                   "headroom": HEADROOM, "rows": tolerance_rows(results, table),
                   "summary": summarize(results), "case_columns": CASE_COLUMNS, "cases": cases})


def dumps(ev: dict) -> str:
    """The evidence as JSON text, indented, with each leaf record (a dict of numbers, a measured
    case) on one line, so that it stays short and diffable."""
    import json

    def leaf(x):  # a container of scalars
        values = x.values() if isinstance(x, dict) else x
        return all(not isinstance(v, (dict, list)) for v in values)

    def fmt(x, indent):
        if not isinstance(x, (dict, list)) or leaf(x):
            return json.dumps(x, separators=(", ", ": "))
        pad = " " * (indent + 1)
        if isinstance(x, list):
            return "[\n" + ",\n".join(pad + fmt(v, indent + 1) for v in x) + "\n" + " " * indent + "]"
        return "{\n" + ",\n".join(f"{pad}{json.dumps(k)}: {fmt(v, indent + 1)}" for k, v in x.items()) \
            + "\n" + " " * indent + "}"

    return fmt(ev, 0) + "\n"


def markdown(ev: dict) -> str:
    f = lambda x: "-" if x is None else ("inf" if x == math.inf else f"{x:.2e}")  # noqa: E731
    env = ev["environment"]
    lines = ["# Measured tolerances", "",
             f"Generated by `{ev['command']}` on {env['platform']} (torch {env['torch']}, "
             f"tensorflow {env.get('tensorflow', '-')}, keras {env.get('keras', '-')}, "
             f"{env['torch_threads']} torch threads). Evidence: `conformance/compare/tolerance_evidence.json`. "
             "The table the suite uses is `conformance/tolerance.TOLERANCES`; each row's reason cites "
             "the numbers below.", "",
             f"Metric: {ev['metric']}.", "",
             "Every registry case (every variant) in each regime below, inputs standard normal and token "
             "ids uniform; rows are fitted to " + ", ".join(f"`{r}`" for r in ev["fitted_regimes"])
             + f" with headroom x{ev['headroom']:g} rounded up to 1, 2 or 5; `stress` is reported against "
             "the rows, not absorbed into them.", ""]
    lines += [f"- `{k}`: {v}" for k, v in ev["regimes"].items()]
    lines += ["", "## Tolerance rows against the evidence", "",
              "| dtype | metric | table bound | worst fitted (outputs and ops) | worst fitted output | where | "
              "headroom | proposed | stress worst | stress within row | overflows (NonFiniteError) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for dtype, row in ev["rows"].items():
        headroom = f"{row['headroom']:.1f}x" if "headroom" in row else "-"
        within = "-" if "stress_covered" not in row else ("yes" if row["stress_covered"] else "NO")
        lines.append(
            f"| {dtype} | {row['metric']} | {f(row.get('current_bound'))} | {f(row['worst'])} | "
            f"{f(row['worst_output'])} | {row['worst_at']} | {headroom} | {f(row['proposed'])} | "
            f"{f(row['stress_worst'])} ({row['stress_at']}) | {within} | {len(row['overflows'])} |")
    overflows = [(d, o) for d, row in ev["rows"].items() for o in row["overflows"]]
    if overflows:
        lines += ["", "Overflows, each raised as a named `NonFiniteError` (never passed on as inf/NaN):", ""]
        lines += [f"- {d}: {o}" for d, o in overflows]
    lines += ["", "## Outputs, per dtype and framework (every case and regime)", "",
              "| dtype | framework | max abs | p99 abs | mean abs | max rel | p99 rel | mean rel | needed | norm_rel |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for dtype, fws in ev["summary"].items():
        for fw, s in fws.items():
            o = s["outputs"]
            lines.append(f"| {dtype} | {fw} | " + " | ".join(f(o[k]) for k in (
                "max_abs", "p99_abs", "mean_abs", "max_rel", "p99_rel", "mean_rel", "needed", "norm_rel")) + " |")
    agreement = [(d, fw, s["device_agreement"]) for d, fws in ev["summary"].items() for fw, s in fws.items()
                 if "device_agreement" in s]
    if agreement:
        lines += ["", "## The same framework and dtype: this device against cpu", "",
                  "| dtype | framework | max abs | p99 abs | max rel | needed | norm_rel |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {d} | {fw} | " + " | ".join(f(a[k]) for k in ("max_abs", "p99_abs", "max_rel", "needed",
                                                                      "norm_rel")) + " |" for d, fw, a in agreement]
    lines += ["", "## Traced ops, per kind (error accumulated up to that op)", ""]
    for dtype, fws in ev["summary"].items():
        lines += [f"### {dtype}", "",
                  "| op | framework | max abs | p99 abs | mean abs | max rel | p99 rel | needed | norm_rel |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for fw, s in fws.items():
            for kind, o in s["ops"].items():
                lines.append(f"| {kind} | {fw} | " + " | ".join(f(o[k]) for k in (
                    "max_abs", "p99_abs", "mean_abs", "max_rel", "p99_rel", "needed", "norm_rel")) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"
