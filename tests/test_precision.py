"""Precision as a harness dimension (issue 7): dtype policies, TF32 detection and diagnosis,
float16 overflow named at its op, measured tolerances and their evidence, Keras on the torch
backend, and torch's fused-attention option."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from conformance import cli
from conformance.backends import build, environment, supports, torch_backend
from conformance.backends.dtypes import FLOAT16_MAX, round_to_tf32
from conformance.backends.finite import NonFiniteError, first_nonfinite, traced
from conformance.compare.tf32 import tf32_cause
from conformance.suites import measure
from conformance.spec.registry import CASES, case_id
from conformance.suites.cases import case_data, check_case, failure_message
from conformance.compare.tolerance import TOLERANCES, Comparison, compare

ROOT = Path(__file__).resolve().parent.parent
EVIDENCE = ROOT / "conformance" / "compare" / "tolerance_evidence.json"


# ------------------------------------------------------------------------------ dtype policy

@pytest.mark.parametrize("framework", ["torch", "tf"])
@pytest.mark.parametrize("dtype,want", [("bfloat16", {"bfloat16"}), ("float16", {"float16"}),
                                        ("mixed_bfloat16", {"bfloat16", "float32"}),
                                        ("mixed_float16", {"float16", "float32"})])
def test_low_precision_builds_compute_in_their_dtype_and_keep_float32_weights_when_mixed(framework, dtype, want):
    _, cfg, w, inputs, reference = case_data("gpt2", "default")
    m = build(framework, cfg, w, dtype=dtype)
    out = m(**inputs)
    assert {str(v.dtype) for v in out.values()} <= want
    stored = {str(v.dtype) for v in m.weights().values()}
    assert stored == ({"float32"} if dtype.startswith("mixed_") else {dtype})
    results = check_case("gpt2", "default", framework, dtype)
    assert all(r.passed for r in results), failure_message(results)


def test_numpy_declares_what_it_does_not_run_and_build_says_why():
    assert supports("numpy", None, "float32") is None and "scipy.special.erf" in supports("numpy", None, "float16")
    _, cfg, w, _, _ = case_data("linear", "default")
    with pytest.raises(ValueError, match=r"numpy does not support dtype='float16': scipy.special.erf has no "
                                         r"float16 loop"):
        build("numpy", cfg, w, dtype="float16")
    with pytest.raises(ValueError, match="tf does not support dtype='tf32'"):
        build("tf", cfg, w, dtype="tf32")
    with pytest.raises(ValueError, match=r"dtype must be one of \['float64', 'float32', 'tf32'"):
        build("torch", cfg, w, dtype="int8")


def test_only_supported_combinations_are_generated(pytestconfig):
    fused = [c for c in CASES if c[1] == "fused"]
    assert {c[0] for c in fused} == {"scaled_dot_product_attention", "multi_head_attention", "encoder_layer",
                                     "gpt2", "bert", "llama", "vit", "t5", "bart"}
    for case in fused:  # attention_impl="fused" is every framework's own fused call
        assert all(supports(f, case, "float32", "cpu") is None for f in ("numpy", "torch", "tf"))
    assert "runs on ['cpu']" in supports("tf", None, "float32", "cuda")
    import torch
    assert (supports("torch", None, "bfloat16", "cuda") is None) == torch.cuda.is_available()


# ------------------------------------------------------------------------------ low-precision conformance

LOW_CASES = [("layer_norm", "default"), ("multi_head_attention", "causal"), ("encoder_layer", "default"),
             ("bert", "default"), ("rms_norm", "default"), ("llama", "default"), ("llama", "gemma2")]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("framework", ["torch", "tf"])
@pytest.mark.parametrize("case", LOW_CASES, ids=[case_id(c) for c in LOW_CASES])
def test_low_precision_matches_reference_within_its_row(case, framework, dtype):
    results = check_case(*case, framework, dtype)
    assert all(r.passed for r in results), failure_message(results)


CAUGHT = [("shifted_mask", ("multi_head_attention", "default"), "bfloat16"),
          ("untransposed_query", ("encoder_layer", "default"), "bfloat16"),
          ("shifted_mask", ("multi_head_attention", "default"), "float16"),
          ("missing_scale", ("encoder_layer", "default"), "float16")]


@pytest.mark.parametrize("bug,case,dtype", CAUGHT, ids=[f"{b}-{case_id(c)}-{d}" for b, c, d in CAUGHT])
def test_low_precision_rows_still_catch_structural_bugs(monkeypatch, bug, case, dtype):
    """The rows are loose, not blind: a shifted mask or an untransposed kernel fails bfloat16 and
    float16, a missing 1/sqrt(Dh) fails float16 (bfloat16's 0.5 lets its 0.15 through)."""
    from conformance.suites import test_planted_bugs
    _, cfg, w, _, _ = case_data(*case)
    results = check_case(*case, "torch", dtype, built=getattr(test_planted_bugs, bug)(monkeypatch, cfg, w, dtype))
    assert not all(r.passed for r in results)
    assert "max-norm relative error, bound" in failure_message(results)


# ------------------------------------------------------------------------------ TF32

def test_precision_environment_records_every_tf32_flag():
    env = environment(("torch", "tf"))
    for key in ("torch_tf32_matmul", "torch_tf32_cudnn", "torch_float32_matmul_precision", "tf_tf32",
                "tf32_capable_gpu", "torch_tf32_effective"):
        assert key in env, key
    import torch
    assert env["torch_tf32_matmul"] == torch.backends.cuda.matmul.allow_tf32
    if not torch.cuda.is_available():
        assert env["torch_tf32_effective"] is False and env["tf_tf32_effective"] is False


def test_round_to_tf32_keeps_ten_mantissa_bits_in_numpy_and_torch():
    import torch
    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 100
    r = round_to_tf32(x)
    assert (r.view(np.uint32) & 0x1FFF == 0).all()
    rel = np.abs(r - x) / np.abs(x)
    assert rel.max() <= 2.0 ** -11 * 1.0001 and rel.max() > 2.0 ** -12
    np.testing.assert_array_equal(torch_backend.round_to_tf32(torch.from_numpy(x)).numpy(), r)
    assert np.isinf(round_to_tf32(np.float32([np.inf])))[0]


def test_tf32_emulation_rounds_matmul_operands_only():
    import torch
    a, b = (torch.from_numpy(np.random.default_rng(i).standard_normal((16, 64)).astype(np.float32)) for i in (1, 2))
    rounded = torch_backend.round_to_tf32(a) @ torch_backend.round_to_tf32(b).T
    with torch_backend.TF32Emulation():
        emulated, added = a @ b.T, a + b
    assert torch.equal(emulated, rounded) and not torch.equal(emulated, a @ b.T)
    assert torch.equal(added, a + b)


def test_tf32_build_is_detectably_not_float32():
    """torch dtype='tf32' (emulated on cpu) passes its own row and fails the float32 one: TF32 left
    on where float32 is expected is caught, never absorbed."""
    tf32 = check_case("encoder_layer", "default", "torch", "tf32")
    assert all(r.passed for r in tf32), failure_message(tf32)
    _, cfg, w, inputs, reference = case_data("encoder_layer", "default")
    out = build("torch", cfg, w, dtype="tf32")(**inputs)
    as_float32 = [compare(k, out[k], reference[k], TOLERANCES["float32"]) for k in reference]
    assert not all(r.passed for r in as_float32)


def _tf32_against_float32(name):
    """A synthetic TF-vs-torch comparison: TF rounds the matmul inputs to TF32, torch does not."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((8, 256)).astype(np.float32), rng.standard_normal((256, 64)).astype(np.float32)
    tf_run = round_to_tf32(x) @ round_to_tf32(w)
    return compare(name, tf_run, x @ w, TOLERANCES["float32"])


def test_tf32_is_named_as_the_cause_when_flags_differ_and_the_error_fits():
    c = _tf32_against_float32("encoder.0.attention.query.output")
    assert not c.passed
    cause = tf32_cause({"tf": True, "torch": False}, [Comparison("embeddings.output", 0, 0, (), True), c])
    assert cause.startswith("TF32 on in tf, off in torch: matmul inputs rounded to 10-bit mantissa")
    assert "encoder.0.attention.query.output" in cause


def test_tf32_is_not_blamed_when_off_or_when_the_error_does_not_fit():
    c = _tf32_against_float32("encoder.0.attention.scores")
    assert tf32_cause({"tf": False, "torch": False}, c) is None
    assert "TF32 on in both (tf, torch)" in tf32_cause({"tf": True, "torch": True}, c)
    norm = Comparison("encoder.0.attention_norm.output", 0.9, 0.5, (0,), False)
    assert "not the output of a matmul" in tf32_cause({"tf": True, "torch": False}, norm)
    huge = Comparison("encoder.0.attention.scores", 3.0, 2.0, (0,), False, "", 10.0)
    assert "max-norm rel 3.0e-01 at encoder.0.attention.scores, far above TF32 rounding" in \
        tf32_cause({"tf": True, "torch": False}, huge)


# ------------------------------------------------------------------------------ float16 overflow

def test_first_nonfinite_finds_the_first_record_in_execution_order():
    from conformance.core.trace import Summary
    import ml_dtypes
    records = {"a": np.ones(3), "ids": np.arange(3), "b": np.array([1.0, np.inf, np.nan], np.float16),
               "c": np.array([np.inf])}
    assert first_nonfinite(records) == ("b", 2)
    assert first_nonfinite({"a": np.ones(2)}) is None
    assert first_nonfinite({"s": Summary((2,), "float16", 0.0, 0.0, 0.0, 1, 0)}) == ("s", 1)
    assert first_nonfinite({"bf": np.array([1, np.inf], ml_dtypes.bfloat16)}) == ("bf", 1)


def _first_past_float16(cfg, w, inputs):
    _, ref = traced(build("numpy", cfg, w, dtype="float64"), inputs)
    return next(n for n, r in ref.items() if np.abs(r).max() > FLOAT16_MAX)


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_float16_overflow_in_attention_scores_is_named_not_passed_on(framework):
    _, cfg, w, inputs, _ = case_data("multi_head_attention", "default")
    big = {**inputs, "x": inputs["x"] * 300}
    with pytest.raises(NonFiniteError, match=r"float16: \d+ non-finite values in outputs \['output'\] from finite "
                                             r"inputs; first non-finite op: scores \(\d+ values\)") as e:
        build(framework, cfg, w, dtype="float16")(**big)
    assert e.value.op == "scores" == _first_past_float16(cfg, w, big)
    assert "float16 max 65504" in str(e.value)
    out = build(framework, cfg, w, dtype="bfloat16")(**big)  # bfloat16 has float32's range
    assert np.isfinite(out["output"].astype(np.float32)).all()


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_float16_overflow_in_a_gpt2_layer_is_named_inside_a_trace_too(framework):
    _, cfg, w, inputs, _ = case_data("gpt2", "default")
    w = dict(w)
    for name in ("layers.0.attention.query.kernel", "layers.0.attention.key.kernel"):
        w[name] = w[name] * 3000  # std 60: scores past 65504
    expected = _first_past_float16(cfg, w, inputs)
    assert expected == "layers.0.attention.scores"
    m = build(framework, cfg, w, dtype="float16")
    with pytest.raises(NonFiniteError) as e:
        m.trace(**inputs)
    assert e.value.op == expected and e.value.count > 0
    m.check_finite = False  # opting out hands back the raw inf / NaN
    assert not np.isfinite(m(**inputs)["logits"].astype(np.float32)).all()


# ------------------------------------------------------------------------------ measured tolerances

def test_error_stats_and_the_row_metrics():
    s = measure.error_stats(np.array([1.0, 2.1, 0.0]), np.array([1.0, 2.0, 0.001]))
    assert s["max_abs"] == pytest.approx(0.1) and s["needed"] == pytest.approx(0.1 / 3)
    assert s["norm_rel"] == pytest.approx(0.1 / 2.0)
    assert s["max_rel"] == pytest.approx(0.1 / 2.0)  # 0.001 (off by 100%) is below REL_FLOOR x max |r|
    assert measure.error_stats(np.array([np.inf]), np.array([1.0]))["needed"] == math.inf
    assert [measure._nice_ceil(x) for x in (0.0042, 0.11, 3e-5, 1.0)] == [0.005, 0.2, 5e-5, 1.0]
    assert measure.metric("float32") == "needed" and measure.metric("bfloat16") == "norm_rel"


def test_measure_case_covers_outputs_and_traced_ops_per_kind():
    results = measure.measure_case("encoder_layer", "default", "bert", ("torch",), ("float32", "float16"))
    assert [(m.framework, m.dtype) for m in results] == [("torch", "float32"), ("torch", "float16")]
    f32, f16 = results
    assert {"MultiHeadAttention.scores", "MultiHeadAttention.probs", "LayerNorm.output", "Linear.output",
            "EncoderLayer.output"} <= set(f16.ops)
    assert f16.outputs["output"]["norm_rel"] > 10 * f32.outputs["output"]["norm_rel"] > 0
    rows = measure.tolerance_rows(results, TOLERANCES)
    assert rows["float16"]["metric"] == "norm_rel" and rows["float16"]["covered"]


def test_device_agreement_compares_devices_the_same_way_and_cuda_needs_a_gpu():
    same = measure.device_agreement("linear", "default", "torch", "float16", devices=("cpu", "cpu"))
    assert same["output"]["max_abs"] == 0.0
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch does not support dtype='float32' on device='cuda': the torch "
                                             "framework runs on \\['cpu'\\]: this machine has none"):
            measure.device_agreement("linear", "default", "torch", "float32")


def test_committed_evidence_covers_the_registry_and_every_row_cites_it():
    ev = json.loads(EVIDENCE.read_text())
    measured = {c[1] for c in ev["cases"]}
    missing = sorted({case_id(c) for c in CASES} - measured)
    assert not missing, f"evidence lacks {missing}: run `tmirror tolerances --presets bert-base,gpt2`"
    for dtype, tol in TOLERANCES.items():
        row = ev["rows"][dtype]
        assert measure.bound(tol) >= row["worst"], f"{dtype}: row {measure.bound(tol)} < measured {row['worst']}"
        assert measure.metric(dtype) == row["metric"] and (tol.scale_rtol > 0) == (row["metric"] == "norm_rel")
        assert f"{row['worst']:.1e}" in tol.reason, f"{dtype}'s reason does not cite its worst {row['worst']:.1e}"
        assert not row["overflows"], row["overflows"]
    assert (ROOT / "reports" / "tolerances.md").read_text().startswith("# Measured tolerances")


def test_tmirror_tolerances_writes_evidence_and_table(tmp_path, capsys):
    out, ev = tmp_path / "t.md", tmp_path / "e.json"
    # "linear[[]*": fnmatch's literal "[", so linear's own variants and not linear_attention's
    code = cli.main(["tolerances", "--cases", "linear,linear[[]*", "--dtypes", "float32,float16", "--regimes", "suite",
                     "--frameworks", "torch", "--out", str(out), "--evidence", str(ev)])
    assert code == 0, capsys.readouterr()
    data = json.loads(ev.read_text())
    assert set(data["rows"]) == {"float32", "float16"} and data["rows"]["float16"]["covered"]
    assert {c[1] for c in data["cases"]} == {"linear", "linear[no_bias]"}
    assert "| float16 | norm_rel |" in out.read_text()
    assert cli.main(["tolerances", "--cases", "nothing*"]) == 2
    assert "no registry case matches --cases 'nothing*'" in capsys.readouterr().err


def test_tmirror_tolerances_merge_adds_cases_and_refuses_one_measured_twice(tmp_path, capsys):
    """--merge keeps the evidence's cases and adds the new ones (several globs); the rows and summaries are
    those one run over both would give; a case measured in both is refused, not double-counted."""
    out, ev = tmp_path / "t.md", tmp_path / "e.json"
    base = ["tolerances", "--dtypes", "float32", "--regimes", "suite", "--frameworks", "torch", "--out", str(out),
            "--evidence", str(ev)]
    assert cli.main([*base, "--cases", "linear,linear[[]*,softmax"]) == 0
    both = json.loads(ev.read_text())
    assert cli.main([*base, "--cases", "linear,linear[[]*"]) == 0
    assert cli.main([*base, "--cases", "softmax", "--merge"]) == 0
    merged = json.loads(ev.read_text())
    assert sorted(map(tuple, merged["cases"])) == sorted(map(tuple, both["cases"]))
    assert merged["rows"]["float32"]["worst"] == both["rows"]["float32"]["worst"]
    assert merged["summary"]["float32"]["torch"]["outputs"] == both["summary"]["float32"]["torch"]["outputs"]
    assert cli.main([*base, "--cases", "softmax", "--merge"]) == 2
    assert "already measured" in capsys.readouterr().err


# ------------------------------------------------------------------------------ Keras on the torch backend
# (every case on keras-torch and keras-jax: conformance/suites/test_keras_backends.py)


def test_keras_torch_backend_float64_is_a_named_keras_limit():
    from conformance.compare.keras_backends import keras_backend_runs
    _, cfg, w, inputs, reference = case_data("linear", "default")
    run = keras_backend_runs(cfg, w, inputs, backends=("torch",), dtype="float64", reference=reference)["torch"]
    assert run.error is None and not run.passed  # float32 matmul: 1e-6 off, far outside the float64 row
    assert run.downcasts == ["matmul"] and all(c.passed for c in run.within_float32)  # the op, measured
    assert "keras/src/backend/common/dtypes.py" in run.note and "ops.matmul, ops.mean and ops.maximum" in run.note


# ------------------------------------------------------------------------------ fused attention

FUSED_CASES = [("scaled_dot_product_attention", "fused"), ("multi_head_attention", "fused"), ("gpt2", "fused")]


@pytest.mark.parametrize("framework", ["numpy", "torch", "tf"])
@pytest.mark.parametrize("case", FUSED_CASES, ids=case_id)
def test_fused_attention_traces_context_but_no_scores_or_probs(case, framework):
    """attention_impl="fused" is one call in every framework (F.scaled_dot_product_attention,
    keras.ops.dot_product_attention, one NumPy expression): exactly the taps ATTENTION_IMPLS declares
    are missing, and the outputs still equal the reference's."""
    _, cfg, w, inputs, reference = case_data(*case)
    out, records = traced(build(framework, cfg, w, dtype="float64"), inputs)
    _, unfused = traced(build(framework, cfg.replace(attention_impl="reference"), w, dtype="float64"), inputs)
    leaves = {n.rpartition(".")[2] for n in records}
    assert "context" in leaves and not leaves & {"scores", "probs"}
    assert set(unfused) - set(records) == {n for n in unfused if n.rpartition(".")[2] in ("scores", "probs")}
    for key in reference:
        assert compare(key, out[key], reference[key], TOLERANCES["float64"]).passed


@pytest.mark.parametrize("framework", ["numpy", "torch", "tf"])
def test_fused_attention_zeroes_fully_masked_rows(framework):
    _, cfg, w, inputs, _ = case_data("multi_head_attention", "default")
    inputs = {**inputs, "mask": inputs["mask"].copy()}
    inputs["mask"][0] = False
    fused = build(framework, cfg.replace(attention_impl="fused"), w, dtype="float64")(**inputs)["output"]
    np.testing.assert_allclose(fused[0], np.broadcast_to(w["output.bias"], fused[0].shape), atol=1e-12)
