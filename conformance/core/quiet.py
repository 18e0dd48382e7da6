"""TensorFlow's load-time lines kept off stderr.

TensorFlow 2.21 writes two lines to file descriptor 2 when its native library loads ("All log messages
before absl::InitializeLog() is called are written to STDERR", "oneDNN custom operations are on"),
before its logging reads TF_CPP_MIN_LOG_LEVEL, so the variable cannot silence them. `install()` puts a
finder on `sys.meta_path` that runs TensorFlow's first import, wherever in the process it happens,
with descriptor 2 pointed at /dev/null. An import that fails still raises; only what TensorFlow prints
while it loads is dropped. (The oneDNN setting that line announces is recorded in every report's
environment table instead.)
"""
import contextlib
import importlib.abc
import importlib.machinery
import os
import sys


@contextlib.contextmanager
def stderr_descriptor_silenced():
    """Descriptor 2 on /dev/null for the block: native code writes there without Python's sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the first import loads the library
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            with stderr_descriptor_silenced():
                load(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())
