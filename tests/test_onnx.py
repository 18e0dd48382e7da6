"""ONNX export (`conformance.backends.onnx_export`, `tmirror export`, `build("onnx", ...)`): graphs run at
shapes other than the export shapes, GPT-2 decodes the reference's tokens, the file carries its
metadata and passes the checker, intermediate values line up with trace names so a planted bug
is pinned to its op, the report section, and every failure is one line.

Exports are the conformance suite's (registry tiny configs, `suite.case_data` weights), kept for
the session by `onnx_export.export`: run together, nothing here exports twice.
"""
import json

import numpy as np
import onnx
import pytest

from conformance import cli, weights
from conformance.backends import onnx_export
from conformance.spec import families
from conformance.report import onnx as onnx_report
from conformance.backends.build import build
from conformance.core.config import Config
from conformance.generate import generate
from conformance.suites.cases import case_data
from conformance.compare.tolerance import compare_outputs

FAST = {"torch": "torchscript", "tf": "tf2onnx"}  # the default-tier exporters of each source
DYNAMO = ("gpt2", "default")  # the one model the default tier exports with torch.export


def exported(name, variant, source, exporter):
    _, cfg, w, _, _ = case_data(name, variant)
    return onnx_export.export(cfg, w, source, exporter=exporter)


def onnx_model(name, variant, source, exporter):
    return onnx_export.build_from(exported(name, variant, source, exporter))


EXPORTS = [(*DYNAMO, "torch", "dynamo")] + [(m, "default", s, e) for m in families.FAMILIES for s, e in FAST.items()]


@pytest.mark.parametrize("name,variant,source,exporter", EXPORTS, ids=lambda v: str(v))
def test_runs_at_other_shapes_than_exported(name, variant, source, exporter):
    entry, cfg, w, _, _ = case_data(name, variant)
    inputs = entry.inputs(cfg, variant, seed=1, batch=3, length=17)  # exported at batch 2, sequence 5
    out = onnx_model(name, variant, source, exporter)(**inputs)
    results = compare_outputs(f"onnx[{exporter}] {name}", out, build("numpy", cfg, w, dtype="float64")(**inputs),
                              "float32")
    assert all(r.passed for r in results), "\n".join(map(str, results))
    assert all(v.shape[0] == 3 for v in out.values() if v.ndim)  # a scalar (Mixtral's aux_loss) has no batch axis


@pytest.mark.parametrize("name,exporter", [("gpt2", "dynamo"), ("gpt2", "tf2onnx"), ("llama", "torchscript"),
                                           ("llama", "tf2onnx")])
def test_greedy_tokens_match_the_reference(name, exporter):
    """Greedy decoding through onnxruntime (no cache: the graph takes whole sequences); Llama's
    prompt is left-padded, so its graph is fed position_ids = cumsum(mask) - 1."""
    _, cfg, w, _, _ = case_data(name, "default")
    source = "tf" if exporter == "tf2onnx" else "torch"
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 5))
    mask = None
    if families.get(name).decoding.position_ids:
        mask = np.ones_like(prompt)
        mask[1, :2] = 0
    reference = generate(build("numpy", cfg, w, dtype="float64"), prompt, 6, use_cache=False, attention_mask=mask)
    tokens = generate(onnx_model(name, "default", source, exporter), prompt, 6, use_cache=False, attention_mask=mask)
    np.testing.assert_array_equal(tokens, reference)


@pytest.mark.parametrize("name,variant,source,exporter", [(*DYNAMO, "torch", "dynamo"), ("bert", "default", "tf", "tf2onnx")])
def test_file_has_metadata_dynamic_axes_and_passes_checker(name, variant, source, exporter, tmp_path):
    _, cfg, w, _, _ = case_data(name, variant)
    e = exported(name, variant, source, exporter)
    e.save(tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["weights_fingerprint"] == weights.fingerprint(w)
    assert meta["source_framework"] == source and meta["opset"] == "18" and meta["preset"] == f"custom {cfg.kind}"
    assert ("tf2onnx" in meta["exporter"]) if exporter == "tf2onnx" else ("dynamo=True" in meta["exporter"])
    assert Config.from_dict(json.loads(meta["config"])) == cfg
    assert [i.name for i in proto.graph.input] == onnx_export.signature(cfg)[0]
    for i in proto.graph.input:  # batch and sequence are symbolic, not numbers
        dims = i.type.tensor_type.shape.dim
        assert len(dims) == 2 and all(d.dim_param and not d.dim_value for d in dims), i
    assert next(o.version for o in proto.opset_import if o.domain == "") == 18


@pytest.mark.parametrize("name,variant,source,exporter", EXPORTS, ids=lambda v: str(v))
def test_trace_keeps_every_module_output_and_all_agree(name, variant, source, exporter):
    """Only a module output of the weights alone may have no value in the graph: exporters fold those into
    initializers (DeBERTa's relative table and, in tf2onnx, its projections, `onnx_export.input_free`)."""
    entry, cfg, w, inputs, _ = case_data(name, variant)
    _, reference = build("numpy", cfg, w, dtype="float64").trace(**inputs)
    _, records = onnx_model(name, variant, source, exporter).trace(**inputs)
    module_outputs = [n for n in reference if ".output" in n]
    missing = set(module_outputs) - set(records)
    assert missing <= onnx_export.input_free(cfg), sorted(missing - onnx_export.input_free(cfg))
    assert onnx_report.first_divergence(reference, records) is None
    assert [c.name for c in onnx_report.compare_trace(reference, records)] == [n for n in reference if n in records]


def test_input_free_names_are_the_weights_alone():
    """DeBERTa's relative table, normed, and its per-layer projections (the key's second call) depend on no
    input; its content projections and BERT's outputs do."""
    deberta = onnx_export.input_free(case_data("deberta", "default")[1])
    assert {"relative.output", "relative_norm.output", "encoder.0.attention.key.output#1"} <= deberta
    assert not {"encoder.0.attention.key.output", "embeddings.output"} & deberta
    assert not [n for n in onnx_export.input_free(case_data("bert", "default")[1]) if n.endswith(".output")]


@pytest.mark.parametrize("name,source,exporter,layer", [
    ("bert", "torch", "torchscript", "encoder.0"), ("bert", "tf", "tf2onnx", "encoder.0"),
    ("gpt2", "torch", "dynamo", "layers.0")])
def test_planted_bug_in_one_initializer_is_pinned_to_its_op(name, source, exporter, layer):
    """The query kernel of layer 0, scaled by 1.01 inside the ONNX file: the first kept op out of
    tolerance is that projection's output, and everything before it still agrees."""
    _, cfg, w, inputs, _ = case_data(name, "default")
    e = exported(name, "default", source, exporter)
    init, transposed = onnx_export.initializer_for(e, w[f"{layer}.attention.query.kernel"])
    kernel = onnx.numpy_helper.to_array(next(i for i in e.proto.graph.initializer if i.name == init))
    buggy = onnx_export.build_from(onnx_export.with_initializer(e, init, kernel * np.float32(1.01)))
    _, reference = build("numpy", cfg, w, dtype="float64").trace(**inputs)
    _, records = buggy.trace(**inputs)
    first = onnx_report.first_divergence(reference, records)
    assert first is not None and first.name == f"{layer}.attention.query.output", first
    before = list(reference)[:list(reference).index(first.name)]
    assert all(c.passed for c in onnx_report.compare_trace({n: reference[n] for n in before}, records))


def test_section_rows_patterns_and_markdown():
    _, cfg, w, inputs, _ = case_data(*DYNAMO)
    section = onnx_report.onnx_section(cfg, w, inputs, repeats=2)
    rows = {r["source"]: r for r in section["exporters"]}
    assert rows["torch"]["exporter"] == "dynamo" and rows["tf"]["exporter"] == "tf2onnx"
    for r in rows.values():
        assert r["status"] == "ok" and r["passed"] and r["first_divergence"] is None, r
        assert r["file_bytes"] > 0 and r["ops"] == sum(r["op_types"].values()) and r["latency_ratio"] > 0
        assert max(r["max_abs_error"].values()) < 1e-4 and set(r["patterns"]) == set(onnx_report.PATTERNS)
    assert "LayerNormalization" in rows["torch"]["patterns"]["layer_norm"]  # one fused op ...
    assert "LayerNormalization" not in rows["tf"]["patterns"]["layer_norm"]  # ... or its arithmetic
    assert "Softmax" in rows["torch"]["patterns"]["attention"] and "Softmax" in rows["tf"]["patterns"]["attention"]
    text = onnx_report.markdown(section)
    assert "## ONNX" in text and "### What each exporter emits" in text and "torch (dynamo)" in text


def test_unconverted_ops_are_a_failed_row_and_a_one_line_error():
    """tf2onnx cannot write the Keras graph's strided slices at opset 9: a clear row, no traceback."""
    _, cfg, w, inputs, _ = case_data(*DYNAMO)
    section = onnx_report.onnx_section(cfg, w, inputs, opset=9, sources=("tf",))
    row = section["exporters"][0]
    assert row["status"] == "failed" and "not ONNX ops at opset 9" in row["reason"] and "\n" not in row["reason"]
    assert "FAILED" in onnx_report.markdown(section)


def test_dynamo_failure_falls_back_to_torchscript_with_the_reason(monkeypatch):
    def broken(*args):
        raise RuntimeError("unsupported op aten::frobnicate\nwith a long\nexplanation")

    monkeypatch.setitem(onnx_export.EXPORT_FUNCTIONS, "dynamo", broken)
    monkeypatch.setattr(onnx_export, "_exports", {k: v for k, v in onnx_export._exports.items() if k[-1] != "dynamo"})
    _, cfg, w, _, _ = case_data("bert", "default")
    e = onnx_export.export(cfg, w, "torch")
    assert e.exporter == "torchscript"
    assert e.fallback == "dynamo: RuntimeError: unsupported op aten::frobnicate"
    assert e.metadata["fallback_reason"] == e.fallback
    assert {p.key: p.value for p in e.proto.metadata_props}["fallback_reason"] == e.fallback


@pytest.fixture
def tiny_weights_file(tmp_path):
    _, cfg, w, _, _ = case_data("bert", "default")
    weights.save(w, tmp_path / "bert.safetensors", cfg)
    return tmp_path / "bert.safetensors"


def test_cli_export_writes_a_checked_file(tiny_weights_file, tmp_path, capsys):
    out = tmp_path / "bert.onnx"
    rc = cli.main(["export", "bert-tiny", "--framework", "tf", "--weights", str(tiny_weights_file), "--out", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert "onnxruntime on input_ids (3, 17)" in stdout and "FAIL" not in stdout
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert {p.key: p.value for p in proto.metadata_props}["preset"] == "bert-tiny"


@pytest.mark.parametrize("args,words", [
    (["--framework", "torch", "--exporter", "torchscript", "--opset", "30"],
     "failed: torchscript: RuntimeError: Unsupported onnx_opset_version: 30"),
    (["--framework", "tf", "--exporter", "torchscript"], "exporter for source='tf' must be one of ['tf2onnx', 'keras']; received exporter='torchscript'"),
    (["--framework", "tf", "--weights", "/nonexistent/w.safetensors"], "weights file not found: /nonexistent/w.safetensors"),
])
def test_cli_export_errors_are_one_line_and_exit_2(args, words, tiny_weights_file, capsys):
    if "--weights" not in args:
        args = [*args, "--weights", str(tiny_weights_file)]
    rc = cli.main(["export", "bert-tiny", *args, "--out", str(tiny_weights_file.parent / "x.onnx")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("tmirror export: error:")]
    assert rc == 2 and len(lines) == 1 and words in lines[0], err
    assert "Traceback" not in err


def test_cli_bad_framework_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["export", "bert-tiny", "--framework", "jax"])
    assert e.value.code == 2 and "argument --framework: invalid choice: 'jax'" in capsys.readouterr().err


def test_bad_calls_say_what_was_wrong():
    entry, cfg, w, inputs, _ = case_data("bert", "default")
    m = onnx_model("bert", "default", "torch", "torchscript")
    ids = inputs["input_ids"].copy()
    ids[0, 0] = cfg.vocab_size
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 97\) \(vocab_size\); received values in"):
        m(**{**inputs, "input_ids": ids})
    with pytest.raises(ValueError, match=r"Bert takes inputs \['input_ids', 'attention_mask', 'token_type_ids'\]; "
                                         r"received unknown input 'cache_position'"):  # the front door, as in every framework
        m(**inputs, cache_position=ids)
    with pytest.raises(ValueError, match=r"Bert requires inputs \['input_ids'\]; received no 'input_ids'"):
        m(attention_mask=inputs["attention_mask"])
    with pytest.raises(ValueError, match="keeps no key/value cache"):
        onnx_model("gpt2", "default", "torch", "torchscript").step(inputs["input_ids"], [])
    with pytest.raises(ValueError, match="onnx does not support dtype='float64': the onnx framework runs float32 exports"):
        build("onnx", cfg, w, source="torch", dtype="float64")
    with pytest.raises(ValueError, match="source must be one of"):
        build("onnx", cfg, w, source="jax")
    with pytest.raises(ValueError, match="go with framework='onnx' only"):
        build("torch", cfg, w, source="tf")
    # left-out optional inputs get the model's own defaults: no mask, segment 0
    plain = {"input_ids": inputs["input_ids"]}
    np.testing.assert_allclose(m(**plain)["last_hidden_state"],
                               build("numpy", cfg, w, dtype="float64")(**plain)["last_hidden_state"], atol=1e-4)


def test_roberta_bad_ids_are_refused_by_the_session_as_by_the_mirrors():
    """The exported graph numbers positions from the ids itself; the session refuses what the mirrors refuse,
    word for word: a pad between real tokens, a sequence whose positions run past the table."""
    _, cfg, w, inputs, _ = case_data("bert", "roberta")
    m = onnx_model("bert", "roberta", "torch", "torchscript")
    inside = inputs["input_ids"].copy()
    inside[0, 3] = cfg.pad_token_id
    too_long = np.full((1, cfg.max_positions - 1), 5)
    for bad in ({**inputs, "input_ids": inside}, {"input_ids": too_long}):
        with pytest.raises(ValueError) as ours:
            m(**bad)
        with pytest.raises(ValueError) as reference:
            build("numpy", cfg, w)(**bad)
        assert str(ours.value) == str(reference.value)
