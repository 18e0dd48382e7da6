"""The pytest options and parametrization of the generated suite (`pytest conformance`) and of
`pytest tests`, as a plugin: registered by the `pytest11` entry point `conformance.pytest_plugin`
(pyproject.toml), so `pytest --pyargs conformance` runs the suite from an installed package, and named
by the checkout's root conftest.py (`pytest_plugins`), so a checkout that is not installed runs it too.
pytest registers a plugin once under its name, and both use this module's name, so an installed checkout
loads it once.

  --frameworks numpy,torch,tf   which implementations to check against the reference
  --dtype float64,float32       which dtypes (also tf32, bfloat16, float16, mixed_bfloat16, mixed_float16;
                                only the combinations a framework supports are generated)
  --device cpu|cuda             where to run; cases are generated only for the backends that run on that
                                device (torch on cuda), and asking for cuda with no CUDA device is an error
  --full                        also run bert-base and gpt2 at full size (minutes)
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("transformer-mirror")
    group.addoption("--frameworks", default="numpy,torch,tf", help="comma-separated frameworks")
    group.addoption("--dtype", default="float64,float32", help="comma-separated dtypes")
    group.addoption("--device", default="cpu", help="comma-separated devices: cpu, cuda")
    group.addoption("--full", action="store_true", help="run the full-size model tier")


def _listed(config, name, allowed):
    values = [v.strip() for v in config.getoption(name).split(",") if v.strip()]
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise pytest.UsageError(f"--{name.lstrip('-')} values must be in {list(allowed)}; received {unknown}")
    return values


def pytest_configure(config):
    from conformance.backends import DEVICES, DTYPES, FRAMEWORKS, backend
    config.mirror_frameworks = _listed(config, "--frameworks", FRAMEWORKS)
    config.mirror_dtypes = _listed(config, "--dtype", DTYPES)
    config.mirror_devices = _listed(config, "--device", DEVICES)
    for device in config.mirror_devices:
        if not any(device in backend(f).available_devices() for f in config.mirror_frameworks):
            raise pytest.UsageError(f"--device {device}: none of the frameworks {config.mirror_frameworks} "
                                    f"runs on {device} on this machine (no CUDA device)")
    config.addinivalue_line("markers", "full: full-size models, run only with --full")
    config.addinivalue_line("markers", "gradients: generated only for dtypes with a gradient tolerance row")
    config.addinivalue_line("markers", "xdist_group(name): tests that share a worker under --dist loadgroup "
                                       "(registered here too, for runs without xdist)")


def pytest_collection_modifyitems(config, items):
    """Without --full the full-size tier is deselected (not collected), so it never shows as skipped."""
    if config.getoption("--full"):
        return
    full = [item for item in items if "full" in item.keywords]
    if full:
        config.hook.pytest_deselected(items=full)
        items[:] = [item for item in items if "full" not in item.keywords]


def pytest_generate_tests(metafunc):
    """Every test that asks for `framework`, `dtype` or `device` runs over the chosen ones."""
    config = metafunc.config
    explicit = {n.strip() for m in metafunc.definition.iter_markers("parametrize")
                for n in (m.args[0].split(",") if isinstance(m.args[0], str) else m.args[0])}
    names = [n for n in metafunc.fixturenames if n not in explicit]
    frameworks = config.mirror_frameworks
    if "framework_twins_only" in names:
        frameworks = [f for f in frameworks if f != "numpy"]
    from conformance.backends import supports
    if "case" in names and "framework" in names:
        # registry cases x frameworks (x dtypes x devices): only what the backend and the entry
        # declare they support is generated (Backend.supports), so nothing shows as skipped
        from conformance.spec.registry import CASES, case_id
        axes = [a for a in ("dtype", "device") if a in names]
        dtypes = config.mirror_dtypes if "dtype" in axes else [None]
        if metafunc.definition.get_closest_marker("gradients"):
            from conformance.compare.tolerance import TOLERANCES  # gradients: the dtypes with a gradient row
            dtypes = [d for d in dtypes if d is None or (d in TOLERANCES and TOLERANCES[d].grad is not None)]
        devices = config.mirror_devices if "device" in axes else [None]
        combos = [(c, f, d, v) for c in CASES for f in frameworks for d in dtypes for v in devices
                  if (f, d) != ("numpy", "float64") and supports(f, c, d or "float32", v) is None]
        keep = [True, True, "dtype" in axes, "device" in axes]
        values = [tuple(x for x, k in zip(combo, keep) if k) for combo in combos]
        ids = ["-".join([case_id(v[0])] + list(v[1:])) for v in values]
        metafunc.parametrize(",".join(["case", "framework"] + axes), values, ids=ids)
        return
    if "framework" in names and "dtype" in names:
        # numpy in float64 is the reference itself: that pair is not generated, not skipped
        pairs = [(f, d) for f in frameworks for d in config.mirror_dtypes
                 if (f, d) != ("numpy", "float64") and supports(f, None, d, None) is None]
        metafunc.parametrize("framework,dtype", pairs, ids=[f"{f}-{d}" for f, d in pairs])
    elif "framework" in names:
        metafunc.parametrize("framework", frameworks)
    elif "dtype" in names:
        metafunc.parametrize("dtype", config.mirror_dtypes)
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", config.mirror_devices)


@pytest.fixture
def framework_twins_only():
    """Ask for this fixture to run a test over torch and tf only (not the reference itself)."""
    return True
