"""int8 weights measured: the int8 model's distance from the float reference, ours beside onnxruntime's.

    m = measure(cfg, w, inputs)                    # Int8Measurement: every framework's and onnxruntime's error
    errors(int8_outputs, float64_reference)        # {output key: OutputError(SQNR dB, max abs, max-norm rel)}
    ort = onnxruntime_int8(cfg, w, "quantize_dynamic")   # or "MatMulNBits": the float ONNX export, quantized
    ort.session.run(inputs); ort.agreement         # its outputs; how its weights compare with ours

Ours (`conformance.weights.quantize`) is weight-only: int8 kernels, float activations. onnxruntime has
two ways to quantize the project's torch ONNX export (`METHODS`):

- `quantize_dynamic(per_channel=True, weight_type=QInt8)` on the MatMul and Gemm nodes chooses the same
  per-channel symmetric weights as ours (its scale is max|W| / 127 too, zero points 0) and also
  quantizes each MatMul's input on the fly (uint8, one scale per tensor, `DynamicQuantizeLinear` ->
  `MatMulInteger`): W8A8, so its error adds the activations' rounding to ours.
- `MatMulNBitsQuantizer(bits=8, is_symmetric=True)`, one block per column (the block at least the
  input width; MLAS takes blocks up to 256, so a wider input gets blocks of 256): weight-only like ours, on MatMul nodes only (a Gemm, torch's export of a Linear
  with a bias at rank 2, stays float), with its own symmetric rule: the channel's signed extreme maps to
  -128, so |s| = max|W| / 128 and the range is [-128, 127].

Their weights are matched to ours by value (each float initializer equal to one of our kernels, or its
transpose), not by name, as the exporter names initializers as it likes (`val_26`, `onnx::MatMul_356`,
`pooler.weight`).
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

METHODS = {"quantize_dynamic": "W8A8: per-channel int8 weights, uint8 activations per tensor per call",
           "MatMulNBits": "weight-only: 8-bit weights, one block per column, float activations"}
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
    method: str
    session: onnx_export.Session
    agreement: dict  # kernels, matched, scale_ratio (ours / theirs, min and max), q_mismatch, zero_points,
    #                  extra_quantized (theirs that are no kernel of ours: a tied head's table)


def onnxruntime_int8(cfg: Config, weights: dict, method: str = "quantize_dynamic",
                     exporter: str | None = "torchscript") -> OrtInt8:
    """The float model exported from torch (`onnx_export.export`) quantized by onnxruntime's `method`
    (`METHODS`), in onnxruntime."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}; received method={method!r}")
    import onnx

    exported = onnx_export.export(cfg, weights, "torch", exporter=exporter)
    _, ours = quantize.quantize_int8(cfg, weights)
    with onnx_export._quiet():
        quantized = _dynamic(exported.model) if method == "quantize_dynamic" else _nbits(exported.model, ours)
    theirs = {i.name: onnx.numpy_helper.to_array(i) for i in quantized.graph.initializer}
    agreement = weight_agreement(exported.proto, theirs, weights, ours, method)
    return OrtInt8(method, onnx_export.Session(dataclasses.replace(exported, model=quantized.SerializeToString())),
                   agreement)


def _dynamic(model: bytes):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    with tempfile.TemporaryDirectory() as folder:
        src, dst = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
        src.write_bytes(model)
        quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])
        return onnx.load(str(dst))


def _nbits(model: bytes, ours: dict):
    """MatMulNBits at 8 bits, symmetric, a block (a power of two in 16..256, all MLAS takes) at least every
    kernel's input width, where it can: past 256 inputs, blocks of 256 (finer than one per channel)."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    widest = max(ours[k].shape[0] for k in quantize.int8_kernels(ours))
    block = min(256, max(16, 1 << (widest - 1).bit_length()))
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(onnx.load_from_string(model), bits=8, block_size=block, is_symmetric=True)
    quantizer.process()
    return quantizer.model.model


def _their_kernel(theirs: dict, init: str, transposed: bool, shape: tuple, method: str):
    """(scale (out,), q (in, out) int, zero point) of the float initializer `init` as `method` stored it, or None."""
    if method == "MatMulNBits":
        if init + "_Q8" not in theirs or transposed:
            return None
        k, n = shape
        scales = theirs[init + "_scales"].reshape(n, -1)                         # (out, blocks)
        block = theirs[init + "_Q8"].shape[-1]
        sign = np.repeat(np.sign(scales), block, axis=1)[:, :k]                   # (out, in)
        q = theirs[init + "_Q8"].reshape(n, -1)[:, :k].astype(np.int64) - 128   # (out, in), stored with offset 128
        return np.abs(scales).max(axis=1), (sign * q).T, 0  # the channel's scale; each block's sign into q
    base = next((b for b in (init, init + "_Transposed") if b + "_scale" in theirs), None)
    if base is None:
        return None
    q = theirs[base + "_quantized"].astype(np.int64)
    q = q.T if transposed and base == init else q
    return theirs[base + "_scale"], q, int(np.abs(theirs[base + "_zero_point"].astype(np.int64)).max())


def weight_agreement(float_proto, theirs: dict, weights: dict, ours: dict, method: str) -> dict:
    """How onnxruntime's int8 weights compare with ours, kernel by kernel (matched by value)."""
    from onnx import numpy_helper
    floats = {i.name: numpy_helper.to_array(i) for i in float_proto.graph.initializer}
    kernels = quantize.int8_kernels(ours)
    ratios, mismatch, zero_points, used = [], [], [], set()
    for name in kernels:
        w = weights[name]
        for init, a in floats.items():
            transposed = a.shape == w.T.shape and np.array_equal(a, w.T)
            got = (transposed or (a.shape == w.shape and np.array_equal(a, w))) and \
                _their_kernel(theirs, init, transposed, w.shape, method)
            if got:
                scale, q, zero_point = got
                ratios.append(ours[name + quantize.SCALE] / scale)
                mismatch.append(float((q != ours[name]).mean()))
                zero_points.append(zero_point)
                used.add(init)
                break
    suffix = "_Q8" if method == "MatMulNBits" else "_quantized"
    stored = {k[:-len(suffix)].removesuffix("_Transposed") for k in theirs if k.endswith(suffix)
              and theirs[k].dtype in (np.int8, np.uint8) and len(theirs[k].shape) >= 2}
    ratio = np.concatenate(ratios) if ratios else np.array([np.nan])
    return {"kernels": len(kernels), "matched": len(ratios), "scale_ratio": (float(ratio.min()), float(ratio.max())),
            "q_mismatch": max(mismatch, default=float("nan")), "zero_points": max(zero_points, default=0),
            "extra_quantized": sorted(stored - used)}


@dataclass(frozen=True)
class Int8Measurement:
    ours: dict         # {framework: {output: OutputError}}: its int8 model against the float64 float model
    agree: dict        # {framework: True if its int8 model equals numpy's float64 int8 model under its dtype's row}
    theirs: dict       # {onnxruntime method: {output: OutputError}}; {} when not asked for
    agreement: dict    # {onnxruntime method: `weight_agreement`, or {"refused": why}}
    bytes: tuple       # (float32 weights, int8 weight set), bytes as stored
    linear_bytes: tuple  # (the Linear kernels in float32, int8 kernels + their scales)

    def passed(self) -> bool:
        """Every framework within the int8 row and in agreement with numpy's int8 model."""
        bound = tolerance(ROW).scale_rtol
        return all(self.agree.values()) and all(e.max_norm_rel <= bound for errs in self.ours.values()
                                                for e in errs.values())


def measure(cfg: Config, weights: dict, inputs: dict, frameworks=FRAMEWORKS, onnxruntime: bool = True) -> Int8Measurement:
    """`cfg`'s int8 model (`weights.quantize_int8`) in each framework (numpy float64, the others float32)
    against the float64 float model, and onnxruntime's quantized float exports (every `METHODS`) beside it."""
    cfg8, w8 = quantize.quantize_int8(cfg, weights)
    reference = build("numpy", cfg, weights, dtype="float64")(**inputs)
    int8_reference = build("numpy", cfg8, w8, dtype="float64")(**inputs)
    ours, agree = {}, {}
    for framework in frameworks:
        dtype = "float64" if framework == "numpy" else "float32"
        out = int8_reference if framework == "numpy" else build(framework, cfg8, w8, dtype=dtype)(**inputs)
        ours[framework] = errors(out, reference)
        agree[framework] = all(c.passed for c in compare_outputs(framework, out, int8_reference, dtype))
    theirs, agreement = {}, {}
    for method in METHODS if onnxruntime else ():
        try:
            ort = onnxruntime_int8(cfg, weights, method)
            theirs[method], agreement[method] = errors(ort.session.run(inputs), reference), ort.agreement
        except onnx_export.ExportError as e:
            agreement[method] = {"refused": str(e)}
    kernels = quantize.int8_kernels(w8)
    scales = [k + quantize.SCALE for k in kernels]
    return Int8Measurement(ours, agree, theirs, agreement, (weights_lib.weight_bytes(weights), weights_lib.weight_bytes(w8)),
                           (weights_lib.weight_bytes(weights, kernels), weights_lib.weight_bytes(w8, kernels + scales)))


HEADERS = ["int8 model", "output", "SQNR (dB)", "max abs", "max-norm rel", f"within {ROW}", "= numpy int8"]


def rows(m: Int8Measurement) -> list[tuple]:
    """One row per (implementation, output) of `m`, for `tmirror quantize`."""
    bound = tolerance(ROW).scale_rtol
    runs = [(f"{f} ({'float64' if f == 'numpy' else 'float32'})", errs, m.agree[f]) for f, errs in m.ours.items()]
    runs += [(f"onnxruntime {method}", errs, None) for method, errs in m.theirs.items()]
    return [(label, key, f"{e.sqnr_db:.1f}", f"{e.max_abs:.2e}", f"{e.max_norm_rel:.2e}",
             "yes" if e.max_norm_rel <= bound else "NO", "" if agree is None else "yes" if agree else "NO")
            for label, errs, agree in runs for key, e in errs.items()]


def agreement_line(method: str, a: dict) -> str:
    """onnxruntime's weights by `method` against ours, in words."""
    if "refused" in a:
        return f"onnxruntime {method}: {a['refused']}"
    low, high = a["scale_ratio"]
    extra = a["extra_quantized"]
    return (f"onnxruntime {method} weights: {a['matched']}/{a['kernels']} of our kernels quantized, scale ours / theirs "
            f"{low:.6g} to {high:.6g}, {a['q_mismatch']:.1%} of q differ, zero points {a['zero_points']}"
            + (f"; it also quantizes {len(extra)} MatMul(s) ours keeps float (a tied head's table: "
               f"{', '.join(extra)})" if extra else ""))


def notes(m: Int8Measurement) -> list[str]:
    """Weight bytes, and how onnxruntime's weights compare with ours."""
    (f, q), (lf, lq) = m.bytes, m.linear_bytes
    return [f"weights: {f:,} bytes float32 -> {q:,} int8 set ({f / q:.2f}x); Linear kernels {lf:,} -> {lq:,} "
            f"int8 + scales ({lf / lq:.2f}x)"] + [agreement_line(k, a) for k, a in m.agreement.items()]
