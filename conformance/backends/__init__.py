"""One seam per framework: the `Backend` each framework implements, and `build`, the door through them.

    from conformance.backends import build
    m = build("tf", cfg, w, dtype="float32")

`base` declares the protocol and `Built`; `numpy_backend`, `torch_backend`, `tf_backend` and
`onnx_backend` are the only modules that know a framework; `dtypes` is the dtype policy they
share and `finite` the overflow check.
"""
from conformance.backends.base import Backend, Built, Gradients, cotangents_for  # noqa: F401
from conformance.backends.build import (BACKENDS, DEVICES, FRAMEWORKS, backend, build, environment, load,  # noqa: F401
                                        supports)
from conformance.backends.dtypes import DTYPES  # noqa: F401
