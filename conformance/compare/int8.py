"""int8 weights measured: the int8 model's distance from the float reference, ours beside onnxruntime's.

    m = measure(cfg, w, inputs)                    # Int8Measurement: every framework's and onnxruntime's error
    errors(int8_outputs, float64_reference)        # {output key: OutputError(SQNR dB, max abs, max-norm rel)}
    ort = onnxruntime_int8(cfg, w)                 # the float ONNX export through quantize_dynamic
    ort.session.run(inputs); ort.agreement         # its outputs; how its weights compare with ours

Ours (`conformance.weights.quantize`) is weight-only: int8 kernels, float activations. onnxruntime's
`quantize_dynamic(per_channel=True, weight_type=QInt8)` on the MatMul / Gemm nodes of the project's ONNX
export chooses the same per-channel symmetric weights (its scale is max|W| / 127 too) and also quantizes
each MatMul's input on the fly (uint8, one scale per tensor, `DynamicQuantizeLinear` -> `MatMulInteger`):
W8A8, so its error adds the activations' rounding to ours. Its weights are matched to ours by value
(each float initializer equal to one of our kernels, or its transpose), not by name, as the exporter
names initializers as it likes (`val_26`, `onnx::MatMul_356`, `pooler.weight`).
"""
from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conformance import weights as weights_lib
from conformance.backends import onnx_export
from conformance.backends.build import FRAMEWORKS, build
from conformance.compare.tolerance import compare_outputs, sqnr_db, tolerance
from conformance.core.config import Config
from conformance.weights import quantize

ROW = "int8_weights"  # its tolerance row (DEPLOYMENT_TOLERANCES)


@dataclass(frozen=True)
class OutputError:
    sqnr_db: float
    max_abs: float
    max_norm_rel: float  # max |a - r| / max |r|: what the row bounds


def errors(actual: dict, reference: dict) -> dict[str, OutputError]:
    out = {}
    for key in sorted(reference):
        a, r = np.asarray(actual[key], np.float64), np.asarray(reference[key], np.float64)
        err = float(np.abs(a - r).max())
        out[key] = OutputError(sqnr_db(a, r), err, err / float(np.abs(r).max()))
    return out


@dataclass(frozen=True)
class OrtInt8:
    session: onnx_export.Session
    agreement: dict  # kernels, matched, max_scale_rel_diff, q_mismatch, zero_points, extra_quantized


def onnxruntime_int8(cfg: Config, weights: dict, exporter: str | None = "torchscript") -> OrtInt8:
    """The float model exported from torch (`onnx_export.export`), its MatMul and Gemm nodes through
    `onnxruntime.quantization.quantize_dynamic(per_channel=True, weight_type=QInt8)`, in onnxruntime."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exported = onnx_export.export(cfg, weights, "torch", exporter=exporter)
    quantized = onnx.ModelProto()
    with tempfile.TemporaryDirectory() as folder:
        src, dst = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
        src.write_bytes(exported.model)
        with onnx_export._quiet():
            quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"])
        quantized.ParseFromString(dst.read_bytes())
    _, ours = quantize.quantize_int8(cfg, weights)
    agreement = weight_agreement(exported.proto, quantized, weights, ours)
    return OrtInt8(onnx_export.Session(dataclasses.replace(exported, model=quantized.SerializeToString())), agreement)


def weight_agreement(float_proto, quantized_proto, weights: dict, ours: dict) -> dict:
    """How onnxruntime's int8 weights compare with ours, kernel by kernel (matched by value)."""
    from onnx import numpy_helper
    floats = {i.name: numpy_helper.to_array(i) for i in float_proto.graph.initializer}
    q = {i.name: numpy_helper.to_array(i) for i in quantized_proto.graph.initializer}
    kernels = quantize.int8_kernels(ours)
    scale_diff, mismatch, zero_points, used = [], [], [], set()
    for name in kernels:
        for init, a in floats.items():
            transposed = a.shape == weights[name].T.shape and np.array_equal(a, weights[name].T)
            if not (transposed or (a.shape == weights[name].shape and np.array_equal(a, weights[name]))):
                continue
            base = next((b for b in (init, init + "_Transposed") if b + "_scale" in q), None)
            if base is None:
                continue
            theirs = q[base + "_quantized"]
            theirs = theirs.T if transposed and base == init else theirs
            scale = ours[name + quantize.SCALE]
            scale_diff.append(float(np.abs(q[base + "_scale"] - scale).max() / scale.max()))
            mismatch.append(float((theirs != ours[name]).mean()))
            zero_points.append(int(np.abs(q[base + "_zero_point"].astype(np.int64)).max()))
            used.add(base)
            break
    quantized = {k[:-len("_quantized")] for k in q if k.endswith("_quantized") and q[k].dtype == np.int8}
    return {"kernels": len(kernels), "matched": len(scale_diff),
            "max_scale_rel_diff": max(scale_diff, default=float("nan")),
            "q_mismatch": max(mismatch, default=float("nan")), "zero_points": max(zero_points, default=0),
            "extra_quantized": sorted(quantized - used)}



@dataclass(frozen=True)
class Int8Measurement:
    ours: dict         # {framework: {output: OutputError}}: its int8 model against the float64 float model
    agree: dict        # {framework: True if its int8 model equals numpy's float64 int8 model under its dtype's row}
    theirs: dict | None  # onnxruntime's {output: OutputError}; None: not asked for, or its export refused
    agreement: dict    # `weight_agreement`, or {"refused": why}
    bytes: tuple       # (float32 weights, int8 weight set), bytes as stored
    linear_bytes: tuple  # (the Linear kernels in float32, int8 kernels + their scales)

    def passed(self) -> bool:
        """Every framework within the int8 row and in agreement with numpy's int8 model."""
        bound = tolerance(ROW).scale_rtol
        return all(self.agree.values()) and all(e.max_norm_rel <= bound for errs in self.ours.values()
                                                for e in errs.values())


def measure(cfg: Config, weights: dict, inputs: dict, frameworks=FRAMEWORKS, onnxruntime: bool = True) -> Int8Measurement:
    """`cfg`'s int8 model (`weights.quantize_int8`) in each framework (numpy float64, the others float32)
    against the float64 float model, and onnxruntime's `quantize_dynamic` of the float export beside it."""
    cfg8, w8 = quantize.quantize_int8(cfg, weights)
    reference = build("numpy", cfg, weights, dtype="float64")(**inputs)
    int8_reference = build("numpy", cfg8, w8, dtype="float64")(**inputs)
    ours, agree = {}, {}
    for framework in frameworks:
        dtype = "float64" if framework == "numpy" else "float32"
        out = int8_reference if framework == "numpy" else build(framework, cfg8, w8, dtype=dtype)(**inputs)
        ours[framework] = errors(out, reference)
        agree[framework] = all(c.passed for c in compare_outputs(framework, out, int8_reference, dtype))
    theirs, agreement = None, {}
    if onnxruntime:
        try:
            ort = onnxruntime_int8(cfg, weights)
            theirs, agreement = errors(ort.session.run(inputs), reference), ort.agreement
        except onnx_export.ExportError as e:
            agreement = {"refused": str(e)}
    kernels = quantize.int8_kernels(w8)
    scales = [k + quantize.SCALE for k in kernels]
    return Int8Measurement(ours, agree, theirs, agreement, (weights_lib.weight_bytes(weights), weights_lib.weight_bytes(w8)),
                           (weights_lib.weight_bytes(weights, kernels), weights_lib.weight_bytes(w8, kernels + scales)))


HEADERS = ["int8 model", "output", "SQNR (dB)", "max abs", "max-norm rel", f"within {ROW}", "= numpy int8"]


def rows(m: Int8Measurement) -> list[tuple]:
    """One row per (implementation, output) of `m`, for `tmirror quantize`."""
    bound = tolerance(ROW).scale_rtol
    runs = [(f"{f} ({'float64' if f == 'numpy' else 'float32'})", errs, m.agree[f]) for f, errs in m.ours.items()]
    if m.theirs is not None:
        runs.append(("onnxruntime quantize_dynamic", m.theirs, None))
    return [(label, key, f"{e.sqnr_db:.1f}", f"{e.max_abs:.2e}", f"{e.max_norm_rel:.2e}",
             "yes" if e.max_norm_rel <= bound else "NO", "" if agree is None else "yes" if agree else "NO")
            for label, errs, agree in runs for key, e in errs.items()]


def notes(m: Int8Measurement) -> list[str]:
    """Weight bytes, and how onnxruntime's weights compare with ours."""
    (f, q), (lf, lq) = m.bytes, m.linear_bytes
    lines = [f"weights: {f:,} bytes float32 -> {q:,} int8 set ({f / q:.2f}x); Linear kernels {lf:,} -> {lq:,} "
             f"int8 + scales ({lf / lq:.2f}x)"]
    a = m.agreement
    if "refused" in a:
        lines.append(f"onnxruntime: {a['refused']}")
    elif a:
        extra = a["extra_quantized"]
        lines.append(f"onnxruntime's weights: {a['matched']}/{a['kernels']} kernels matched, scales differ by "
                     f"{a['max_scale_rel_diff']:.1e} (relative), {a['q_mismatch']:.1%} of q differ, zero points "
                     f"{a['zero_points']}" + (f"; it also quantizes {len(extra)} MatMul(s) ours keeps float (a tied "
                                              f"head's table: {', '.join(extra)})" if extra else ""))
    return lines
