"""int8 weights (`conformance.weights.quantize`, `Config.weight_quantization="int8"`): the formula and its
bound, one quantized weight set that numpy, torch and tf each hold as int8 and compute the same thing with
(under the ordinary float rows), the int8 model's distance from the float model under its own row (and
not under float32's), onnxruntime's choice of the same weights, the bytes saved, the refusals and
`tmirror quantize`. The default tier builds torch and tf for an encoder, a decoder and an
encoder-decoder (`DEFAULT`) and numpy and torch for every model; `--full` builds every model in every
framework and every registry case that has a Linear (each model variant, the components).
"""
from __future__ import annotations

import numpy as np
import pytest

import tmirror_runs
from conformance import weights
from conformance.backends.build import backend, build
from conformance.compare import int8
from conformance.compare.tolerance import DEPLOYMENT_TOLERANCES, TOLERANCES, compare_outputs, sqnr_db, tolerance
from conformance.spec import presets, registry
from conformance.spec.registry import CASES, case_id
from conformance.suites.cases import case_data
from conformance.weights.quantize import QMAX, SCALE, dequantize, quantize_int8, quantize_kernel
from numpy_ref.linear import Linear

MODELS = [n for n, e in registry.ENTRIES.items() if e.is_model]
DEFAULT = ("bert", "gpt2", "t5")


def tiered(names):
    return [pytest.param(n, marks=[] if n in DEFAULT else [pytest.mark.full]) for n in names]
_cases: dict = {}


def case(name):
    """(cfg, w, cfg8, w8, inputs, float64 float reference, float64 numpy int8 reference), made once."""
    if name not in _cases:
        _, cfg, w, inputs, reference = case_data(name, "default")
        cfg8, w8 = quantize_int8(cfg, w)
        _cases[name] = cfg, w, cfg8, w8, inputs, reference, build("numpy", cfg8, w8, dtype="float64")(**inputs)
    return _cases[name]


def test_the_formula_one_scale_per_output_channel_and_the_half_step_bound():
    kernel = np.array([[0.5, -0.02, 0.0], [-1.27, 0.011, 0.0]], np.float32)  # (in 2, out 3); channel 2 all zero
    q, s = quantize_kernel(kernel)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (3,)
    np.testing.assert_array_equal(s, np.float32([1.27, 0.02, 0.0]) / np.float32(127))
    np.testing.assert_array_equal(q, [[50, -127, 0], [-127, 70, 0]])  # round(0.011 / (0.02 / 127)) = round(69.85)
    w = np.random.default_rng(0).standard_normal((64, 48)).astype(np.float32) * np.float32(0.02)
    q, s = quantize_kernel(w)
    err = np.abs(w - q.astype(np.float64) * s)                      # (64, 48)
    assert (err <= s * (0.5 + QMAX * 2.0**-24)).all()               # |W - s q| <= s / 2 (+ float32's W / s)
    assert err.max(axis=0).min() > s.min() / 4                      # a real rounding error, not a float copy
    assert (np.abs(q).max(axis=0) == QMAX).all() and q.min() >= -QMAX  # each channel reaches 127; -128 unused


def test_one_weight_set_canonical_names_int8_kernels_and_a_file_that_says_so(tmp_path):
    cfg, w, cfg8, w8, *_ = case("bert")
    assert cfg8 == cfg.replace(weight_quantization="int8")
    kernels = [k for k in w if k.endswith(".kernel") and w[k].ndim == 2]
    assert set(w8) == set(w) | {k + SCALE for k in kernels}         # every Linear kernel, nothing else
    for k in w:
        assert w8[k].dtype == (np.int8 if k in kernels else w[k].dtype), k
    assert all(w8[k + SCALE].shape == (w[k].shape[1],) for k in kernels)
    weights.check(cfg8, w8)
    path = tmp_path / "bert-int8.safetensors"
    weights.save(w8, path, cfg8)
    assert weights.load_config(path) == cfg8 and weights.fingerprint(weights.load(path)) == weights.fingerprint(w8)
    back = dequantize(w8)
    assert set(back) == set(w) and all(np.abs(back[k] - w[k]).max() <= w8[k + SCALE].max() / 2 * 1.0001 for k in kernels)


def test_a_float_model_passed_off_as_int8_is_refused_by_the_weight_check():
    cfg, w, cfg8, *_ = case("bert")
    with pytest.raises(weights.WeightsError, match=r"(?s)26 weight problem.*missing encoder\.0\.attention\.key\.kernel_scale.*"
                                                   r"non-int8 encoder\.0\.attention\.key\.kernel: expected int8"):
        build("torch", cfg8, w)


@pytest.mark.parametrize("framework", ["torch", "tf"])
@pytest.mark.parametrize("name", tiered(MODELS))
def test_every_framework_holds_int8_and_computes_what_numpy_int8_computes(name, framework):
    """(a) Under the ordinary float rows: torch and tf in float64 and float32 against numpy's float64 int8
    model. Each holds the kernels as int8 (not a float copy of s q)."""
    cfg, w, cfg8, w8, inputs, _, int8_reference = case(name)
    for dtype in ("float64", "float32"):
        m = build(framework, cfg8, w8, dtype=dtype)
        results = compare_outputs(f"{framework} int8 {name}", m(**inputs), int8_reference, dtype)
        assert results and all(r.passed for r in results), [str(r) for r in results]
    held = {k: backend(framework).to_numpy(p).dtype for k, p in backend(framework).parameters(m.module).items()}
    assert {k for k, d in held.items() if d == np.int8} == set(weights.quantize.int8_kernels(w8))


def has_linear(case) -> bool:
    entry = registry.get(case[0])
    return any(isinstance(m, Linear) for _, m in entry.reference(entry.config(case[1])).named_modules())


@pytest.mark.full
@pytest.mark.parametrize("case", [c for c in CASES if has_linear(c)], ids=case_id)
def test_every_case_with_a_linear_int8_in_every_framework(case):
    """Every variant and component: torch and tf (float32) equal numpy's float64 int8 model under the float32
    row, and a model's int8 model is within the int8 row of its float model (components run std-0.5
    weights, outside the row's regime: only the agreement is checked there)."""
    entry, cfg, w, inputs, reference = case_data(*case)
    cfg8, w8 = quantize_int8(cfg, w)
    int8_reference = build("numpy", cfg8, w8, dtype="float64")(**inputs)
    for framework in ("torch", "tf"):
        results = compare_outputs(f"{framework} int8", build(framework, cfg8, w8)(**inputs), int8_reference, "float32")
        assert results and all(r.passed for r in results), [str(r) for r in results]
    if entry.is_model:
        results = compare_outputs("int8", int8_reference, reference, int8.ROW)
        assert all(r.passed for r in results), [str(r) for r in results]


@pytest.mark.parametrize("name", MODELS)
def test_int8_is_within_its_own_row_and_misses_float32(name):
    """(b) numpy's int8 model (float64) and torch's (float32) against the float64 float model: within the
    `int8_weights` row, a real quantization error (SQNR far below float32's ~135 dB) that the float32 row refuses."""
    cfg, w, cfg8, w8, inputs, reference, int8_reference = case(name)
    for out in (int8_reference, build("torch", cfg8, w8)(**inputs)):
        results = compare_outputs(f"int8 {name}", out, reference, int8.ROW)
        assert results and all(r.passed for r in results), [str(r) for r in results]
        # every activation output carries the quantization error; Mixtral's aux_loss, a mean over all tokens
        # of router probabilities, averages it away (124 dB measured): held to the row, not to the band
        assert all(30 < sqnr_db(out[k], reference[k]) < 90 for k in reference if k != "aux_loss"), \
            {k: sqnr_db(out[k], reference[k]) for k in reference}
        assert not all(r.passed for r in compare_outputs(f"int8 {name}", out, reference, "float32"))


def test_the_row_is_its_own_and_catches_lost_scales():
    assert int8.ROW in DEPLOYMENT_TOLERANCES and int8.ROW not in TOLERANCES
    assert tolerance(int8.ROW).scale_rtol > TOLERANCES["float32"].rtol
    cfg, w, cfg8, w8, inputs, reference, int8_reference = case("gpt2")
    lost = {k: (np.ones_like(v) if k.endswith(SCALE) else v) for k, v in w8.items()}  # q read as the weight
    out = build("numpy", cfg8, lost, dtype="float64")(**inputs)
    assert not any(r.passed for r in compare_outputs("int8 gpt2, scales lost", out, reference, int8.ROW))
    one = dict(w8)  # one channel's scale one step off: the framework-agreement check sees it
    key = "layers.0.feed_forward.outer.kernel" + SCALE
    one[key] = w8[key].copy()
    one[key][0] *= np.float32(1 + 1 / QMAX)
    results = compare_outputs("torch", build("torch", cfg8, one)(**inputs), int8_reference, "float32")
    assert not all(r.passed for r in results)


@pytest.mark.parametrize("name", ["layer_norm", "softmax"])
def test_a_model_with_no_linear_layer_is_one_error_in_every_framework(name):
    cfg = registry.get(name).tiny
    w = weights.initialize(cfg)
    message = (f"weight_quantization='int8' quantizes the kernels of Linear layers: expected a module with at least "
               f"one Linear; received {registry.get(name).cls}, which has none (build it with weight_quantization='none')")
    with pytest.raises(ValueError) as err:
        quantize_int8(cfg, w)
    assert str(err.value) == message
    entry = registry.get(name)
    for framework in ("numpy", "torch", "tf"):
        b = backend(framework)
        with pytest.raises(ValueError) as err:
            entry.construct(b.package, cfg.replace(weight_quantization="int8"))
        assert str(err.value) == message, framework
        with pytest.raises(ValueError) as err:
            build(framework, cfg.replace(weight_quantization="int8"), w)
        assert str(err.value) == message, framework


def test_weights_already_int8_are_refused():
    cfg, w, cfg8, w8, *_ = case("bert")
    with pytest.raises(ValueError, match=r"^quantize_int8 takes a float model's Config: expected weight_quantization="
                                         r"'none'; received weight_quantization='int8' \(its weights are already int8\)$"):
        quantize_int8(cfg8, w8)
    with pytest.raises(ValueError, match=r"^quantize_int8 takes float weights; received integer tensors "
                                         r"\['encoder\.0\.attention\.key\.kernel', 'encoder\.0\.attention\.output\.kernel', "
                                         r"'encoder\.0\.attention\.query\.kernel'\] \.\.\. \(already quantized\?\)$"):
        quantize_int8(cfg, {k: v for k, v in w8.items() if not k.endswith(SCALE)})
    with pytest.raises(ValueError, match=r"^Config\.weight_quantization must be one of \['none', 'int8'\]; "
                                         r"received weight_quantization='int4'$"):
        cfg.replace(weight_quantization="int4")


def test_weight_bytes_four_times_smaller():
    cfg, w, cfg8, w8, *_ = case("gpt2")
    kernels = weights.quantize.int8_kernels(w8)
    f, q = weights.weight_bytes(w, kernels), weights.weight_bytes(w8, kernels + [k + SCALE for k in kernels])
    assert f == sum(4 * w[k].size for k in kernels) and q == sum(w[k].size + 4 * w[k].shape[1] for k in kernels)
    assert 3.5 < f / q < 4  # (in, out) float32 -> int8 plus out float32 scales: 4 in / (in + 4) (in = 32: 3.6x)
    assert weights.weight_bytes(w8) < weights.weight_bytes(w)


def test_onnxruntime_quantize_dynamic_chooses_our_weights():
    """onnxruntime's per-channel QInt8 weights of the torch export are ours, scale for scale and q for q
    (zero points 0: symmetric); its activations are quantized too, so its output is further from the float
    model than ours."""
    cfg, w, cfg8, w8, inputs, reference, int8_reference = case("bert")
    ort = int8.onnxruntime_int8(cfg, w, "quantize_dynamic")
    a = ort.agreement
    assert a["matched"] == a["kernels"] == len(weights.quantize.int8_kernels(w8))
    assert a["scale_ratio"] == (1.0, 1.0) and a["q_mismatch"] == 0 and a["zero_points"] == 0
    theirs, ours = int8.errors(ort.session.run(inputs), reference), int8.errors(int8_reference, reference)
    assert all(theirs[k].sqnr_db < ours[k].sqnr_db for k in reference), (theirs, ours)
    assert all(e.max_norm_rel <= tolerance(int8.ROW).scale_rtol for e in theirs.values())


def test_onnxruntime_weight_only_matmul_nbits_scales_by_128_and_leaves_the_gemm_float():
    """MatMulNBits (8 bits, symmetric, one block per column) is weight-only like ours, with the channel's
    extreme at -128: every scale is 127/128 of ours. torch exports the pooler (a rank-2 Linear with a bias)
    as a Gemm, which it leaves float. Its outputs are within the int8 row."""
    cfg, w, cfg8, w8, inputs, reference, _ = case("bert")
    ort = int8.onnxruntime_int8(cfg, w, "MatMulNBits")
    a = ort.agreement
    assert (a["matched"], a["kernels"]) == (12, 13) and a["zero_points"] == 0
    assert a["scale_ratio"] == pytest.approx((128 / 127, 128 / 127), rel=1e-6)
    theirs = int8.errors(ort.session.run(inputs), reference)
    assert all(e.max_norm_rel <= tolerance(int8.ROW).scale_rtol and e.sqnr_db < 90 for e in theirs.values()), theirs
    with pytest.raises(ValueError, match=r"^method must be one of \['quantize_dynamic', 'MatMulNBits'\]; "
                                         r"received method='static'$"):
        int8.onnxruntime_int8(cfg, w, "static")


@pytest.mark.xdist_group(tmirror_runs.GROUP)
def test_tmirror_quantize_prints_the_table_and_writes_the_int8_file():
    r = tmirror_runs.run_of("quantize")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0].split("|")[1:-1] == [f" {h:<{len(c) - 2}} " for h, c in zip(int8.HEADERS, lines[0].split("|")[1:-1])]
    body = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[2:6]]
    assert [(b[0], b[1], b[5], b[6]) for b in body] == [
        (f"{f} ({d})", k, "yes", "yes") for f, d in (("numpy", "float64"), ("torch", "float32"))
        for k in ("last_hidden_state", "logits")]
    assert all(30 < float(b[2]) < 90 for b in body)
    assert lines[6].startswith("weights: ") and "Linear kernels 1,572,864 -> 402,432 int8 + scales (3.91x)" in lines[6]
    path = tmirror_runs.OUT / "gpt2-tiny-int8.safetensors"
    assert lines[-1] == f"wrote {path}"
    cfg8 = weights.load_config(path)
    assert cfg8.weight_quantization == "int8" and cfg8.replace(weight_quantization="none") == presets.get("gpt2-tiny")
    weights.check(cfg8, weights.load(path))
    again = tmirror_runs.tmirror("quantize", "gpt2-tiny", "--weights", str(path), "--frameworks", "numpy")
    assert again.returncode == 2 and again.stderr == (
        "tmirror quantize: error: quantize_int8 takes a float model's Config: expected weight_quantization='none'; "
        "received weight_quantization='int8' (its weights are already int8)\n"), again.stderr


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_int8_in_the_half_and_mixed_dtypes_under_their_rows(framework):
    """The dequantized kernel s q takes the parameter dtype (half, or float32 under a mixed policy), so
    the int8 model runs in every dtype its framework runs, each against numpy's float64 int8 model."""
    cfg, w, cfg8, w8, inputs, _, int8_reference = case("gpt2")
    for dtype in ("bfloat16", "float16", "mixed_bfloat16", "mixed_float16"):
        results = compare_outputs(f"{framework} {dtype}", build(framework, cfg8, w8, dtype=dtype)(**inputs),
                                  int8_reference, dtype)
        assert results and all(r.passed for r in results), [str(r) for r in results]


def test_the_onnx_export_of_the_int8_model_computes_it_but_folds_s_q_into_float():
    """`build("onnx", cfg8, w8)` exports torch's int8 model: it equals numpy's int8 model under float32, but
    the exporter folds the constant s q into a float32 initializer, so the file holds no int8 and is no
    smaller (onnxruntime's own quantizers are the way to an int8 ONNX file: `conformance.compare.int8`)."""
    cfg, w, cfg8, w8, inputs, _, int8_reference = case("gpt2")
    m = build("onnx", cfg8, w8, exporter="torchscript")
    results = compare_outputs("onnx int8", m(**inputs), int8_reference, "float32")
    assert results and all(r.passed for r in results), [str(r) for r in results]
    stored = {i.data_type for i in m.module.exported.proto.graph.initializer if len(i.dims) == 2}
    assert stored == {1}  # onnx.TensorProto.FLOAT only: no INT8 (3)
