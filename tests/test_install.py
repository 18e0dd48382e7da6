"""`pytest --pyargs conformance` runs the generated suite from an installed package, with no checkout
around it: the options and parametrization come from the package's own plugin (its pytest11 entry
point), the data the suites read is package data, and the tests are the checkout's."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ["--frameworks", "numpy", "-k", "test_conformance and (linear or softmax) and not rotary"]


def pytest_ids(*args, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_pytest_pyargs_runs_the_suite_from_an_installed_package(tmp_path):
    site, elsewhere = tmp_path / "site", tmp_path / "cwd"
    elsewhere.mkdir()
    source = tmp_path / "source"  # a copy: pip builds in the source tree (build/, *.egg-info), not in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "reports",
                                                                "docs", "bench"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, capture_output=True, timeout=600)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(site)}
    probe = ("import conformance, importlib.metadata as m; print(conformance.__file__); "
             "print(*sorted(e.value for e in m.entry_points(group='pytest11') if e.value.startswith('conformance')))")
    where, plugin = subprocess.run([sys.executable, "-c", probe], env=env, cwd=elsewhere, capture_output=True,
                                   text=True, check=True).stdout.splitlines()
    assert Path(where).is_relative_to(site) and plugin == "conformance.pytest_plugin", (where, plugin)
    installed = pytest_ids("--pyargs", "conformance", "-rA", *SUBSET, cwd=elsewhere, env=env)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    passed = re.findall(r"^PASSED (\S+)", installed.stdout, flags=re.M)
    # the checkout's own collection, with the install's entry point visible too (PYTHONPATH): the plugin
    # named by both the root conftest and the entry point registers once (twice would be a usage error)
    checkout = pytest_ids("--collect-only", "conformance/suites/test_conformance.py", *SUBSET, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(site)})
    collected = [line for line in checkout.stdout.splitlines() if "::" in line]
    assert checkout.returncode == 0 and collected, checkout.stdout[-3000:]
    name = lambda nodeid: nodeid.split("::", 1)[1]  # noqa: E731  (the paths differ: site against checkout)
    assert sorted(map(name, passed)) == sorted(map(name, collected))
    # ids relative to the rootdir pytest chose: the installed package's directory (from the checkout they
    # would read conformance/suites/...)
    assert all(p.startswith("suites/test_conformance.py::") for p in passed), passed[:3]
