"""The `tmirror` command line, run as a user runs it: a subprocess, exit codes, output files, and no
TensorFlow or absl noise in any command's output (each command's run shared with the tests that read
it, `tmirror_runs`)."""
import json
import os
import re
import subprocess
import sys

import pytest

import conformance
import tmirror_runs
from conformance import cli
from tmirror_runs import FULL_ONLY, ON_A_TERMINAL, run_of

shared = pytest.mark.xdist_group(tmirror_runs.GROUP)


def tmirror(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "conformance", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


# What TensorFlow, absl, XLA and the CUDA stubs print on their own: absl's pre-init line, the oneDNN notice,
# glog-style and TF-style C++ log lines, CPU-instruction and CUDA/TensorRT lookups, Python warnings
# raised inside tensorflow, keras or absl.
NOISE = re.compile("|".join([
    r"absl::InitializeLog", r"oneDNN custom operations", r"TF_ENABLE_ONEDNN_OPTS=0",
    r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\]",
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] ", r"tensorflow/core/", r"external/local_xla",
    r"This TensorFlow binary is optimized", r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"[Cc]ould not find cuda drivers", r"failed call to cuInit", r"TF-TRT Warning", r"Could not find TensorRT",
    r"(tensorflow|keras|absl)/\S+\.py:\d+: \w*Warning",
]))


@shared
@pytest.mark.parametrize("command", [pytest.param(c, marks=[pytest.mark.full] if c in FULL_ONLY else [])
                                     for c in sorted(cli.COMMANDS)])
def test_no_framework_noise_in_any_command(command):
    """Every command (generated from cli.COMMANDS: a new one without a cheap line fails here) runs with
    nothing of TensorFlow's, absl's or CUDA's own on stdout or stderr, and, with stderr not a terminal, no
    progress bar either (no carriage return)."""
    r = run_of(command)
    assert r.returncode == 0, r.stderr[-3000:]
    noise = [line for line in re.split(r"[\r\n]+", r.stdout + "\n" + r.stderr) if NOISE.search(line)]
    assert not noise, noise
    if command not in ON_A_TERMINAL:
        assert "\r" not in r.stderr and "\r" not in r.stdout, r.stderr[-1000:]


@shared
def test_progress_bar_on_a_terminal_and_stdout_stays_parseable():
    """With stderr a terminal the bar is drawn there; stdout holds the result line and nothing else."""
    r = run_of("matrix")
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"\rmatrix: +0%\| +\| 0/1 \[", r.stderr), r.stderr  # drawn, then cleared (leave=False)
    assert r.stdout == f"1 of 1 cells pass; wrote {tmirror_runs.OUT}/matrix.md\n"


@pytest.mark.parametrize("command", ["models", "report", "compare", "trace", "explain", "matrix", "compiled"])
def test_help(command):
    r = tmirror(command, "--help")
    assert r.returncode == 0 and "usage: tmirror" in r.stdout


@shared
def test_models_lists_presets_with_published_counts():
    r = run_of("models")
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
    (["compiled", "bert-tiny", "--modes", "jit"],
     "argument --modes: expected a comma-separated subset of ['inductor', 'function', 'xla']; received 'jit'"),
    (["compiled", "bert-huge"], "unknown preset 'bert-huge'"),
])
def test_bad_input_is_one_line_and_exit_2(args, words):
    r = tmirror(*args)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr
    assert "Traceback" not in r.stderr


MISSING = "jax is not installed in this environment, so Keras cannot run on the jax backend"


@pytest.mark.parametrize("surface", ["compare", "matrix", "cli compare", "cli matrix"])
def test_a_keras_backend_that_is_not_installed_is_one_clear_error(surface, monkeypatch, capsys):
    """jax is a dependency, so its absence is made: its module unfindable as `keras_backends.unavailable`
    looks it up. compare, the matrix and both commands say so in the same words, before any work."""
    import importlib.util

    from conformance.compare import keras_backends
    from conformance.report import matrix
    real = importlib.util.find_spec
    monkeypatch.setattr(keras_backends.importlib.util, "find_spec",
                        lambda name, *args: None if name == "jax" else real(name, *args))
    if surface.startswith("cli"):
        argv = ["compare", "bert-tiny", "--a", "keras-jax"] if surface == "cli compare" else \
            ["matrix", "--frameworks", "keras-jax"]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1].endswith(f"keras-jax: {MISSING}") and "Traceback" not in err
        return
    with pytest.raises(ValueError) as e:
        if surface == "compare":
            conformance.compare("keras-jax", preset="gpt2-tiny")
        else:
            matrix.measure(["keras-jax"], ["float32"])
    prefix = "keras-jax: " if surface == "compare" else "--frameworks keras-jax: "
    assert str(e.value) == prefix + MISSING


def test_compiled_refuses_a_mode_its_frameworks_lack_in_one_line(capsys):
    """In process (the frameworks are imported to learn their modes: a subprocess would pay for it again)."""
    assert cli.main(["compiled", "bert-tiny", "--frameworks", "tf", "--modes", "inductor"]) == 2
    err = capsys.readouterr().err
    assert err == ("tmirror compiled: error: modes must name compile modes of frameworks ['tf'], "
                   "tf: ['function', 'xla']; received modes=['inductor']\n"), err


@shared
def test_report_writes_md_json_html():
    r = run_of("report")
    assert r.returncode == 0, r.stderr
    out = tmirror_runs.OUT / "report"
    rec = json.loads((out / "bert-tiny.json").read_text())
    assert rec["schema"] == 1 and rec["parameters"]["canonical"] == 4_385_920
    assert {(run["framework"], run["dtype"]) for run in rec["runs"]} == {("numpy", "float32"), ("torch", "float32"),
                                                                       ("tf", "float32")}
    assert all(run["passed"] and run["first_divergence"] is None for run in rec["runs"])
    assert rec["environment"]["weights_fingerprint"] and "TF_ENABLE_ONEDNN_OPTS" in rec["environment"]
    md = (out / "bert-tiny.md").read_text()
    assert "## Outputs against the float64 reference" in md
    assert "data:image/png;base64," in (out / "bert-tiny.html").read_text()
    # the verdict first, before the environment: every run's row, the parameters and the analytic FLOPs
    from conformance.costs import flops
    from conformance.report import write
    from conformance.spec import presets
    head = md[:md.index("## Environment")]
    assert head.startswith("# bert-tiny: conformance report\n\n**PASS: every framework and dtype (3 runs) agrees")
    for run in rec["runs"]:
        worst = max(o["max_abs"] for o in run["outputs"].values())
        assert re.search(rf"\| {run['framework']} +\| float32 +\| pass +\| {worst:.2e} \(last_hidden_state\) +\| none ", head)
    total = flops.totals(flops.ops(presets.get("bert-tiny"), 2, 16))["all"]
    assert f"Parameters 4,385,920 (every framework counts the same) · forward {write._si(total)}FLOPs (batch 2, " \
           f"sequence 16)" in head


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


@shared
def test_compare_pins_nothing_on_correct_frameworks():
    r = run_of("compare")  # gpt2-tiny, --weights: a file of seed-5 weights
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("first op out of tolerance: none") == 2 and "ops traced" in r.stdout


@shared
def test_trace_shows_frameworks_side_by_side():
    r = run_of("trace")
    assert r.returncode == 0, r.stderr
    assert all(f"{fw} float32" in r.stdout for fw in ("numpy", "torch", "tf"))


@shared
def test_explain_walks_through_every_op_with_the_twins_beside_it():
    r = run_of("explain")
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


@shared
def test_tensorflow_load_lines_stay_off_stderr():
    """TensorFlow 2.21 writes its absl and oneDNN lines to descriptor 2 as it loads, whatever
    TF_CPP_MIN_LOG_LEVEL says (the first run shows it); `conformance`'s import hook drops them, for the
    CLI and for a user who imports conformance or tf_impl before TensorFlow."""
    run = lambda code: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,  # noqa: E731
                                      timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    bare = run("import tensorflow")
    assert "absl::InitializeLog" in bare.stderr, bare.stderr  # the noise the hook exists for
    assert [line for line in bare.stderr.splitlines() if NOISE.search(line)], bare.stderr  # NOISE knows it
    for code in ("import conformance, tensorflow", "import tf_impl", "import conformance, keras"):
        r = run(code + "; import tensorflow as tf; print(float(tf.constant(2.0)) * 2)")
        assert r.returncode == 0 and r.stdout == "4.0\n" and r.stderr == "", (code, r.stderr)
    r = run_of("explain")
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
