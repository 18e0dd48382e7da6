"""`scripts/gpu-check` / `tmirror gpu-check` (issue 21) as far as a CPU allows: the dry run (`--device cpu`)
runs every part and writes a report with the columns of the CPU matrix and the tolerance evidence; with
TensorFlow blocked, as on the GPU machine, it still does, the Keras-on-TF parts skipped with a reason; bad
arguments fail in one line; the budget cuts and records; carried wheels install, and Keras's requirements
are checked; TF32 is forced inside the cuda policy; a failure, and only a real one, fails the verdict."""
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import tmirror_runs

from conformance.backends import backend
from conformance.compare.keras_backends import BackendRun
from conformance.compare.tolerance import compare_outputs
from conformance.report import gpu
from conformance.suites import measure

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check"
# the dry run's stand-ins for each family's base preset: its smallest preset (bert-tiny, gpt2-tiny, ...)
DRY_PRESETS = sorted((gpu._smallest(f) for f in gpu.families.FAMILIES.values() if f.base_preset), key=gpu._parameters)
TIMED = sorted((gpu._smallest(gpu.families.get(gpu.presets.get(p).kind)) for p in gpu.TIMING_PRESETS
                if p in gpu.presets.names()), key=gpu._parameters)  # timed smallest first


def gpu_check(*args, env=None, timeout=900):
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


def header_cells(markdown: str, first: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {first}"))
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.mark.full  # 80 s each on 2 cores: the default tier's time goes to the models
def test_dry_run_runs_every_part_and_writes_the_report(tmp_path):
    # Keras on torch and tensorflow: a third subprocess, jax's, would not fit the 400 s beside the other parts
    # on a 2-core runner; tf_impl on jax is conformance/suites/test_keras_backends.py's
    r = gpu_check("--device", "cpu", "--out", str(tmp_path), "--budget-seconds", "400",
                  "--keras-backends", "torch,tensorflow")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.strip().splitlines()
    n = len(DRY_PRESETS)
    assert len(out) == 1 and out[0].startswith(f"gpu-check cpu (cpu): PASS: matrix 26/26, presets {4 * n}/{4 * n}, "
                                               f"keras {2 * (26 + n)}/{2 * (26 + n)}, TF32 on/off x"), out
    assert "Traceback" not in r.stderr and "tensorflow/core" not in r.stderr  # TF's C++ logging stays quiet
    data = json.loads((tmp_path / "gpu-cpu.json").read_text())
    assert data["verdict"] == {"line": out[0], "exit_status": 0}
    assert list(data["parts"]) == ["matrix", "tf32", "presets", "tolerances", "keras", "timing"]
    assert all(p["done"] == p["total"] > 0 and not p["cut"] for p in data["parts"].values()), data["parts"]
    assert data["imported_in_this_process"] == {"tensorflow": False, "keras": False, "jax": False}
    assert set(data["matrix"]["cells"]) == {f"{c}|torch|{d}" for c in gpu.DRY_CASES for d in ("float32", "bfloat16")}
    assert data["presets"]["rows"] == [f"{p}{impl}" for p in DRY_PRESETS for impl in ("", "[fused]")]
    tf32 = data["tf32"]
    assert tf32["passed"] and tf32["emulated"] and tf32["effect"] > 100
    assert all(row["on"]["flags"] == {"TF32Emulation": True} and "matches TF32 rounding" in row["cause"]
               for row in tf32["rows"]), tf32["rows"]
    keras = data["keras"]
    assert keras["ran"] == ["torch", "tensorflow"] and all(c["passed"] for c in keras["cells"].values())
    assert len(keras["cells"]) == 2 * (2 * len(gpu.DRY_CASES) + n)  # 2 backends: cases x 2 dtypes, presets x 1
    assert not any(s["part"] == "keras" for s in data["skipped"] if "Keras's" in s["what"])
    assert [row["preset"] for row in data["timing"]["rows"]] == TIMED and "bert-tiny" in TIMED
    assert all(row["ratio_fused"] > 0 and row["max_abs_diff"] < 0.1 for row in data["timing"]["rows"])
    for preset in set(gpu.TIMING_PRESETS) - set(gpu.presets.names()):  # llama3.2-1b until its family lands
        assert any(s["part"] == "timing" and s["what"] == preset for s in data["skipped"])
    rows = data["tolerances"]["rows"]
    assert set(rows) == {"float32", "bfloat16"} and all(row["covered"] for row in rows.values())
    assert json.loads((tmp_path / "tolerance_evidence_cpu.json").read_text())["rows"].keys() == rows.keys()
    md = (tmp_path / "gpu-cpu.md").read_text()
    for heading in ("## Environment", "## What ran, what was skipped, what was cut", "## Conformance matrix",
                    "## Full-size presets", "## Fused attention", "## TF32 forced on and off",
                    "## tf_impl on Keras's JAX and PyTorch backends", "## Timing", "## Tolerance evidence on cpu"):
        assert heading in md, heading
    # the same columns as the CPU matrix (reports/README.md) and the tolerance evidence (reports/tolerances.md)
    cpu, mine = header_cells((ROOT / "reports" / "README.md").read_text(), "component"), header_cells(md, "component")
    column = re.compile(r"^\S+ \S+ (cpu|cuda)$")
    assert cpu[0] == mine[0] == "component / model" and all(column.match(c) for c in cpu[1:] + mine[1:])
    assert mine[1:] == ["torch float32 cpu", "torch bfloat16 cpu"]
    evidence = (ROOT / "reports" / "tolerances.md").read_text()
    for first in ("dtype | metric", "dtype | framework | max abs | p99 abs | mean abs"):
        assert header_cells(evidence, first) == header_cells(md, first)


@pytest.mark.full  # 80 s each on 2 cores: the default tier's time goes to the models
def test_dry_run_without_tensorflow_skips_the_keras_on_tf_parts(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text('import sys\nsys.modules["tensorflow"] = None  # a machine without it\n')
    env = {"PYTHONPATH": str(shim)}
    blocked = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True,
                             env={**os.environ, **env})
    assert blocked.returncode != 0 and "ModuleNotFoundError" in blocked.stderr  # the blocker works
    r = gpu_check("--device", "cpu", "--frameworks", "torch", "--out", str(tmp_path / "out"), "--budget-seconds",
                  "400", "--keras-backends", "torch,tensorflow", env=env)  # not jax: as in the dry run above
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().startswith("gpu-check cpu (cpu): PASS")
    data = json.loads((tmp_path / "out" / "gpu-cpu.json").read_text())
    assert data["packages"]["tensorflow"]["importable"] is False
    assert data["imported_in_this_process"]["tensorflow"] is False
    why = {s["what"]: s["why"] for s in data["skipped"]}
    assert "tensorflow is not installed" in why["tf_impl on Keras's tensorflow backend"]
    assert "not installed in this environment" in why["tensorflow"]
    assert data["keras"]["ran"] == ["torch"] and data["keras"]["cells"]
    assert all(c["passed"] for c in data["keras"]["cells"].values())
    assert not any("tensorflow" in k for k in data["keras"]["cells"])
    assert "skipped (keras): tf_impl on Keras's tensorflow backend: tensorflow is not installed" in \
        (tmp_path / "out" / "gpu-cpu.md").read_text()


@pytest.mark.parametrize("args,words", [
    (["--budget-seconds", "0"], "argument --budget-seconds: expected a positive number of seconds; received 0"),
    (["--budget-seconds", "soon"], "expected a number of seconds; received 'soon'"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--dtypes", "float8"], "argument --dtypes: expected a comma-separated subset of"),
    (["--keras-backends", "mxnet"], "expected a comma-separated subset of ['jax', 'torch', 'tensorflow']"),
    (["--frameworks", "jax"], "expected a comma-separated subset of ['torch', 'tf']"),
    (["--device", "cpu", "--cases", "nothing*"], "no registry case matches --cases 'nothing*'"),
])
def test_bad_arguments_fail_in_one_line_with_status_2(args, words):
    r = gpu_check(*args, timeout=300)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tmirror gpu-check: error: ") and words in lines[0], lines
    assert r.stdout == ""


def test_help_lists_the_options():
    r = gpu_check("--help", timeout=300)
    assert r.returncode == 0 and "usage: tmirror gpu-check" in r.stdout and "--budget-seconds" in r.stdout


def test_cuda_without_a_gpu_is_a_one_line_error(monkeypatch, capsys):
    import torch

    from conformance import cli
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^--device cuda: torch \S+ sees no CUDA device on this machine; "
                                         r"the CPU dry run is --device cpu$"):
        gpu.settings("cuda")
    assert cli.main(["gpu-check", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tmirror gpu-check: error: --device cuda: torch")


@pytest.mark.xdist_group(tmirror_runs.GROUP)
def test_a_budget_too_short_cuts_every_part_and_says_so():
    r = tmirror_runs.run_of("gpu-check")  # --budget-seconds 1, the run test_cli's noise check reads too
    assert r.returncode == 0, r.stderr[-3000:]
    tmp_path = tmirror_runs.OUT / "gpu"
    assert re.match(r"gpu-check cpu \(cpu\): PARTIAL: .*; \d+ skipped, \d+ cut;", r.stdout.strip())
    data = json.loads((tmp_path / "gpu-cpu.json").read_text())
    for name, part in data["parts"].items():
        assert part["done"] == 0 and len(part["cut"]) == part["total"] > 0, (name, part)
    assert data["tf32"]["passed"] is None and not data["errors"]
    md = (tmp_path / "gpu-cpu.md").read_text()
    assert "- cut from matrix: linear, softmax[fully_masked]" in md and "- cut from keras: keras[jax]" in md


def _wheel(directory: Path, name: str, version: str, tag="py3-none-any", requires=()):
    dist = f"{name.replace('-', '_')}-{version}.dist-info"
    path = directory / f"{name.replace('-', '_')}-{version}-{tag}.whl"
    files = {f"{name.replace('-', '_')}.py": f"VERSION = {version!r}\n",
             f"{dist}/METADATA": "Metadata-Version: 2.1\n" f"Name: {name}\nVersion: {version}\n"
                                 + "".join(f"Requires-Dist: {r}\n" for r in requires),
             f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n"}
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return path


def test_carried_wheels_install_what_is_missing_and_requirements_are_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "")
    wheels, site = tmp_path / "whl", tmp_path / "site"
    wheels.mkdir()
    _wheel(wheels, "tmirror-probe", "1.0", requires=["numpy>=1", "tmirror-absent-dist", 'pytest; extra == "test"',
                                                    'numpy>=999; python_version < "3"'])
    _wheel(wheels, "tmirror-probe", "0.9")
    _wheel(wheels, "tmirror-unfit", "1.0", tag="cp27-cp27mu-manylinux1_x86_64")
    _wheel(wheels, "numpy", "1.0")
    rec = gpu.carried_wheels(wheels, site)
    actions = {w["wheel"]: w["action"] for w in rec["wheels"]}
    assert actions["tmirror_probe-1.0-py3-none-any.whl"] == "installed"
    assert actions["tmirror_probe-0.9-py3-none-any.whl"] == "not installed: tmirror-probe 1.0 chosen instead"
    assert actions["tmirror_unfit-1.0-cp27-cp27mu-manylinux1_x86_64.whl"].startswith(
        "not installed: built for cp27-cp27mu-manylinux1_x86_64, which this Python")
    assert actions["numpy-1.0-py3-none-any.whl"].startswith("not installed: numpy ")
    assert rec["site"] == str(site) and os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(site)
    probe = subprocess.run([sys.executable, "-c", "import tmirror_probe; print(tmirror_probe.VERSION)"],
                           capture_output=True, text=True, env={**os.environ})
    assert probe.stdout.strip() == "1.0", probe.stderr
    paths = [str(site)] + sys.path
    assert gpu.missing_requirements("tmirror-probe", paths) == ["tmirror-absent-dist (not installed)"]
    assert gpu.missing_requirements("tmirror-never-installed", paths) is None
    assert gpu.carried_wheels(tmp_path / "none", site)["note"].startswith("no wheels in")


def test_keras_readiness_names_what_is_missing(monkeypatch):
    rec = {"directory": ".whl", "site": None}
    assert gpu.keras_unavailable(rec) is None  # this environment: keras and every requirement installed
    monkeypatch.setattr(gpu, "missing_requirements", lambda dist, paths=None: ["optree (not installed)"])
    assert gpu.keras_unavailable(rec).startswith("keras needs optree (not installed), neither installed here nor "
                                                 "carried in .whl")
    monkeypatch.setattr(gpu, "missing_requirements", lambda dist, paths=None: None)
    assert "keras is not installed and .whl holds no keras wheel" in gpu.keras_unavailable(rec)


def test_the_cuda_policy_forces_tf32_on_for_tf32_and_off_for_float32():
    """What the tf32 part records inside a build's policy on cuda: the flags the backend set (no GPU needed
    to set them), restored after."""
    torch_backend = backend("torch")
    before = gpu._tf32_state("cuda", "float32")
    with torch_backend.policy("tf32", "cuda"):
        on = gpu._tf32_state("cuda", "tf32")
    with torch_backend.policy("float32", "cuda"):
        off = gpu._tf32_state("cuda", "float32")
    assert on["allow_tf32"] is True and on["float32_matmul_precision"] == "high"
    assert off["allow_tf32"] is False and off["float32_matmul_precision"] == "highest"
    after = gpu._tf32_state("cuda", "float32")
    assert [after[k] for k in ("allow_tf32", "float32_matmul_precision")] == \
        [before[k] for k in ("allow_tf32", "float32_matmul_precision")]


def test_tf32_is_named_only_when_turning_it_off_fixes_the_cell():
    rng = np.random.default_rng(0)
    reference = {"output": rng.standard_normal((4, 8))}

    def run(device, relative):
        r = BackendRun("jax", "float32", device=device)
        r.outputs = {"output": reference["output"] * (1 + relative)}
        r.comparisons = compare_outputs("x", r.outputs, reference, "float32")
        return r

    runs = {("tf32-like", "jax", "float32"): run("cuda:0", 1e-3), ("tf32-like", "jax,TF32 off", "float32"): run(
        "cuda:0", 1e-7), ("bug", "jax", "float32"): run("cuda:0", 0.5), ("bug", "jax,TF32 off", "float32"): run(
        "cuda:0", 0.5), ("on-cpu", "jax", "float32"): run("cpu:0", 1e-3), ("on-cpu", "jax,TF32 off", "float32"): run(
        "cpu:0", 1e-7)}
    assert not runs[("tf32-like", "jax", "float32")].passed and runs[("tf32-like", "jax,TF32 off", "float32")].passed
    confirm = {"jax": {"env": {"JAX_DEFAULT_MATMUL_PRECISION": "highest"}, "column": "keras[jax,TF32 off]"}}
    named = gpu.named_tf32(runs, confirm, {k[0]: reference for k in runs})
    assert [n["case"] for n in named] == ["tf32-like"]
    assert "passes with JAX_DEFAULT_MATMUL_PRECISION=highest" in named[0]["cause"]


def test_the_verdict_fails_on_a_failed_cell_and_on_an_error(tmp_path):
    s = gpu.settings("cpu", tmp_path, cases="linear")
    rep = gpu.Report(s, gpu.Clock(60))
    rep.data["matrix"] = {"cells": {"linear|torch|float32": {"max_abs": 1.0, "passed": False},
                                    "linear|torch|bfloat16": {"max_abs": 1e-2, "passed": True}}}
    line, code = gpu.verdict(rep)
    assert code == 1 and line.startswith("gpu-check cpu (cpu): FAIL [matrix linear torch float32]: matrix 1/2")
    rep.data["matrix"]["cells"]["linear|torch|float32"]["passed"] = True
    assert gpu.verdict(rep)[0].startswith("gpu-check cpu (cpu): PASS: matrix 2/2") and gpu.verdict(rep)[1] == 0
    rep.error("timing", "bert-base", RuntimeError("CUDA out of memory\nmore"))
    line, code = gpu.verdict(rep)
    assert code == 1 and "FAIL [1 error(s) (timing: RuntimeError: CUDA out of memory)]" in line


def test_device_agreement_is_rendered_with_the_tolerance_evidence_columns():
    stats = measure.error_stats(np.ones(4) + 1e-7, np.ones(4))
    m = measure.Measured("suite", "linear", "torch", "float32", "cuda", {"output": stats},
                         {"Linear.output": [stats]}, agreement={"output": stats})
    lines = measure.agreement_table(measure.evidence([m], "test", {}))
    assert lines[0] == "| dtype | framework | max abs | p99 abs | max rel | needed | norm_rel |"
    assert lines[2].startswith("| float32 | torch | 1.00e-07 |")
