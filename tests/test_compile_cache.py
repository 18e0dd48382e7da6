"""torch.compile leaves nothing in the checkout: inductor's kernels (C++ built by gcc here) go to
its cache directory, outside the repository, and a compile works on this machine at all."""
import subprocess
from pathlib import Path

import numpy as np

from conformance.backends import build
from conformance.suites.cases import case_data

ROOT = Path(__file__).resolve().parents[1]


def untracked() -> set:
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--ignored"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return set(out.splitlines())


def test_inductor_compiles_with_gcc_and_writes_outside_the_checkout():
    from torch._inductor.runtime.cache_dir_utils import cache_dir
    before = untracked()
    _, cfg, w, inputs, reference = case_data("linear", "default")
    out = build("torch", cfg, w, compile="inductor")(**inputs)
    np.testing.assert_allclose(out["output"], reference["output"], rtol=1e-5, atol=1e-5)
    assert not Path(cache_dir()).resolve().is_relative_to(ROOT)
    assert any(Path(cache_dir()).rglob("*.so")) or any(Path(cache_dir()).rglob("*.cpp"))
    assert untracked() - before == set(), untracked() - before
