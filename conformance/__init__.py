"""The conformance harness: presets, shared weights, `build`, tracing and comparison.

    from conformance.spec import presets
    from conformance import weights
    from conformance.backends import build

Importing this package imports no deep-learning framework, and nothing of the harness until
a name below is asked for (PEP 562), so `numpy_ref`, `torch_impl` and `tf_impl` import
`conformance.core` without pulling in the layers above it.
"""
import importlib
import os

from conformance.core import quiet

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's import noise stays out of output
quiet.install()  # ... and the lines it writes to descriptor 2 before reading that variable

_PUBLIC = {  # name -> (module, attribute or None for the module itself)
    "Config": ("conformance.core.config", "Config"),
    "build": ("conformance.backends", "build"),
    "compare": ("conformance.compare", None),   # callable: conformance.compare(a, b, preset=...)
    "presets": ("conformance.spec.presets", None),
    "registry": ("conformance.spec.registry", None),
    "weights": ("conformance.weights", None),
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'conformance' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    value = importlib.import_module(module)
    return value if attribute is None else getattr(value, attribute)
