"""The conformance harness: presets, shared weights, `build`, tracing and comparison.

    from conformance import presets, weights, build

Importing this package imports no deep-learning framework; `build` loads the one it is
asked for.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's import noise stays out of output

from conformance import presets, registry, weights  # noqa: E402
from conformance.build import build  # noqa: E402
from conformance.config import Config  # noqa: E402

__all__ = ["Config", "build", "presets", "registry", "weights"]
