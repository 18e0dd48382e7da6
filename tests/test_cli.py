"""The `tmirror` command line, run as a user runs it: a subprocess, exit codes, output files."""
import json
import os
import subprocess
import sys

import pytest

from conformance import cli


def tmirror(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "conformance", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.mark.parametrize("command", ["models", "report", "compare", "trace", "explain", "matrix", "compiled"])
def test_help(command):
    r = tmirror(command, "--help")
    assert r.returncode == 0 and "usage: tmirror" in r.stdout


def test_models_lists_presets_with_published_counts():
    r = tmirror("models")
    assert r.returncode == 0
    assert "109,482,240" in r.stdout and "124,439,808" in r.stdout and "1,557,611,200" in r.stdout


@pytest.mark.parametrize("args,words", [
    (["report", "bert-huge"], "unknown preset 'bert-huge'; known presets: bart-tiny"),
    (["compare", "bert-tiny", "--weights", "/nonexistent/w.safetensors"], "weights file not found: /nonexistent/w.safetensors"),
    (["report", "bert-tiny", "--seq-len", "600"], "--seq-len must be <= max_positions=512; received 600"),
    (["report", "bert-tiny", "--frameworks", "torch,jax"], "expected a comma-separated subset of ['numpy', 'torch', 'tf']"),
    (["trace", "bert-tiny", "--op", "nothing.*", "--frameworks", "numpy"], "no traced op matches --op 'nothing.*'"),
    (["explain", "lstm"], "unknown component or model 'lstm'; known: linear, softmax"),
    (["explain", "softmax", "--variant", "sparse"], "variant must be one of ['default', 'padding'"),
    (["matrix", "--frameworks", "keras-jax"], "--frameworks keras-jax: jax is not installed in this environment"),
    (["compare", "bert-tiny", "--a", "keras-jax"], "keras-jax: jax is not installed in this environment"),
    (["compiled", "bert-tiny", "--modes", "jit"],
     "argument --modes: expected a comma-separated subset of ['inductor', 'function', 'xla']; received 'jit'"),
    (["compiled", "bert-huge"], "unknown preset 'bert-huge'"),
])
def test_bad_input_is_one_line_and_exit_2(args, words):
    r = tmirror(*args)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr
    assert "Traceback" not in r.stderr


def test_compiled_refuses_a_mode_its_frameworks_lack_in_one_line(capsys):
    """In process (the frameworks are imported to learn their modes: a subprocess would pay for it again)."""
    assert cli.main(["compiled", "bert-tiny", "--frameworks", "tf", "--modes", "inductor"]) == 2
    err = capsys.readouterr().err
    assert err == ("tmirror compiled: error: modes must name compile modes of frameworks ['tf'], "
                   "tf: ['function', 'xla']; received modes=['inductor']\n"), err


def test_report_writes_md_json_html(tmp_path):
    r = tmirror("report", "bert-tiny", "--seq-len", "16", "--batch", "2", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "bert-tiny.json").read_text())
    assert rec["schema"] == 1 and rec["parameters"]["canonical"] == 4_385_920
    assert {(run["framework"], run["dtype"]) for run in rec["runs"]} == {("numpy", "float32"), ("torch", "float32"),
                                                                       ("tf", "float32")}
    assert all(run["passed"] and run["first_divergence"] is None for run in rec["runs"])
    assert rec["environment"]["weights_fingerprint"] and "TF_ENABLE_ONEDNN_OPTS" in rec["environment"]
    assert "## Outputs against the float64 reference" in (tmp_path / "bert-tiny.md").read_text()
    assert "data:image/png;base64," in (tmp_path / "bert-tiny.html").read_text()


def test_report_train_adds_gradients_training_steps_and_memory(tmp_path):
    r = tmirror("report", "gpt2-tiny", "--train", "--seq-len", "8", "--frameworks", "numpy,torch",
                "--dtype", "float64,float32", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "train: pass" in r.stdout and "USDT" not in r.stderr  # the profiler's native lines stay quiet
    sec = json.loads((tmp_path / "gpt2-tiny.json").read_text())["train"]
    assert set(sec["gradients"]) == {"float64", "float32"}
    rows = sec["gradients"]["float32"]["torch"]
    assert {r["group"] for r in rows} == {"param", "activation"} and all(r["passed"] for r in rows)
    from conformance.spec import presets, registry
    assert sorted(r["op"] for r in rows if r["group"] == "param") == sorted(registry.param_shapes(presets.get("gpt2-tiny")))
    assert {(t["framework"], t["dtype"]) for t in sec["training"]} == {("numpy", "float32"), ("torch", "float64"),
                                                                     ("torch", "float32")}
    assert sec["memory"]["weights_bytes"] == 4 * sec["memory"]["parameters"]
    md = (tmp_path / "gpt2-tiny.md").read_text()
    for heading in ("## Gradients against the float64 NumPy backward", "## Training steps",
                    "## Training memory (torch, float32, one step)"):
        assert heading in md


def test_report_train_fails_on_a_gradient_out_of_tolerance():
    from conformance.report import training as train_report
    row = {"op": "layers.0.attention.scores", "group": "activation", "max_abs": 1.0, "scale_error": 1.0}
    sec = {"gradients": {"float32": {"torch": [{**row, "passed": True}]}}, "training": None,
           "unsupported": "no loss"}
    assert train_report.passed(sec)
    sec["gradients"]["float32"]["torch"].append({**row, "passed": False})
    assert not train_report.passed(sec)
    first = next(line for line in train_report.markdown(sec).splitlines() if "first out of tolerance" in line)
    assert "layers.0.attention.scores" in first


def test_compare_pins_nothing_on_correct_frameworks(tmp_path):
    from conformance.spec import presets
    from conformance import weights
    cfg = presets.get("gpt2-tiny")
    weights.save(weights.initialize(cfg, seed=5), tmp_path / "g.safetensors", cfg)
    r = tmirror("compare", "gpt2-tiny", "--weights", str(tmp_path / "g.safetensors"), "--seq-len", "8",
                "--frameworks", "torch,tf", "--dtype", "float64")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("first op out of tolerance: none") == 2 and "ops traced" in r.stdout


def test_trace_shows_frameworks_side_by_side():
    r = tmirror("trace", "bert-tiny", "--op", "encoder.0.attention.probs", "--seq-len", "8")
    assert r.returncode == 0, r.stderr
    assert all(f"{fw} float32" in r.stdout for fw in ("numpy", "torch", "tf"))


def test_explain_walks_through_every_op_with_the_twins_beside_it():
    r = tmirror("explain", "multi_head_attention", "--variant", "causal")
    assert r.returncode == 0, r.stderr
    assert "Attention(Q, K, V) = softmax(Q K^T / sqrt(Dh) + mask) V" in r.stdout
    for op in ("1. query.output (1, 4, 8)", "2. q (1, 4, 4, 2)", "5. scores (1, 4, 4, 4)", "6. probs",
               "8. merged", "9. output.output"):
        assert op in r.stdout, op
    assert "PyTorch float32" in r.stdout and "Keras float64" in r.stdout and "causal=True" in r.stdout


def test_tolerances_on_cuda_measure_torch_unless_told():
    assert cli.tolerance_frameworks("cuda", None) == ["torch"]
    assert cli.tolerance_frameworks("cpu", None) == ["numpy", "torch", "tf"]
    assert cli.tolerance_frameworks("cuda", ["torch", "tf"]) == ["torch", "tf"]


def test_tensorflow_load_lines_stay_off_stderr():
    """TensorFlow 2.21 writes its absl and oneDNN lines to descriptor 2 as it loads, whatever
    TF_CPP_MIN_LOG_LEVEL says (the first run shows it); `conformance`'s import hook drops them, for the
    CLI and for a user who imports conformance or tf_impl before TensorFlow."""
    run = lambda code: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,  # noqa: E731
                                      timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    bare = run("import tensorflow")
    assert "absl::InitializeLog" in bare.stderr, bare.stderr  # the noise the hook exists for
    for code in ("import conformance, tensorflow", "import tf_impl", "import conformance, keras"):
        r = run(code + "; import tensorflow as tf; print(float(tf.constant(2.0)) * 2)")
        assert r.returncode == 0 and r.stdout == "4.0\n" and r.stderr == "", (code, r.stderr)
    r = tmirror("explain", "linear")
    assert r.returncode == 0 and r.stderr == "", r.stderr


@pytest.mark.full
def test_compiled_prints_every_mode_against_reference_and_eager():
    r = tmirror("compiled", "bert-tiny", "--seq-len", "8")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert "first diverging module" in lines[0]
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]) for line in lines[2:]}
    assert rows == {("torch", "inductor"), ("tf", "function"), ("tf", "xla")}
    assert all("| pass |" in line for line in lines[2:]), r.stdout
