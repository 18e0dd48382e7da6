"""The options of `pytest conformance` and `pytest tests` (--frameworks, --dtype, --device, --full) live in
the package, `conformance/pytest_plugin.py`, so that an installed package has them too; a checkout names
the plugin here (an installed one also loads it by its entry point, under the same name: once)."""
pytest_plugins = ["conformance.pytest_plugin"]
