"""Comparison: tolerance, divergence, replay, gradients, and `conformance.compare(a, b, ...)`.

The package itself is callable: `conformance.compare(a, b, preset=...)` is
`conformance.compare.crosscheck.compare`, imported when first called (so importing a submodule
such as `conformance.compare.tolerance` imports no framework and no oracle).
"""
import sys
import types


class _Package(types.ModuleType):
    def __call__(self, a, b="reference", **options):
        from conformance.compare.crosscheck import compare
        return compare(a, b, **options)

    def __getattr__(self, name):
        if name == "Model":
            from conformance.compare.crosscheck import Model
            return Model
        raise AttributeError(f"module 'conformance.compare' has no attribute {name!r}")


sys.modules[__name__].__class__ = _Package
