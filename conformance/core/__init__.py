"""The framework-free core that `numpy_ref`, `torch_impl` and `tf_impl` import, and nothing else.

- `config`: the one frozen `Config` every component and model is built from;
- `checks`: the one input validator, so all three frameworks raise the same words;
- `trace`: the named taps at op boundaries;
- `dropout_masks`: keep masks drawn once in NumPy, so every framework drops the same units;
- `costs`: the records a component's cost formulas yield (`Op`, `Saved`);
- `quiet`: TensorFlow's load-time lines kept off stderr (an import hook `conformance` installs).

It imports NumPy and the standard library only; the import-linter contract in pyproject.toml
keeps it (and the mirrors above it) free of the rest of the harness.
"""
