"""The registry: every component and model declared once, with its three implementations.

The components come from `conformance.spec.components`, the models from the families in
`conformance.spec.families`. The conformance suite is generated from `CASES`: adding an
entry tests it in every framework and dtype with no new test code. Canonical parameter
names and shapes come from the NumPy reference's module tree (`param_shapes`), which
declares them without allocating.
"""
from __future__ import annotations

from conformance.core.config import Config
from conformance.spec.components import COMPONENTS
from conformance.spec.entry import PACKAGES, Entry, Variant  # noqa: F401 (the registry's vocabulary)
from conformance.spec.families import FAMILIES

ENTRIES: dict[str, Entry] = {e.name: e for e in COMPONENTS + [f.entry for f in FAMILIES.values()]}
CASES = [(entry.name, variant) for entry in ENTRIES.values() for variant in entry.variants]


def get(name: str) -> Entry:
    try:
        return ENTRIES[name]
    except KeyError:
        raise ValueError(f"unknown component or model {name!r}; known: {', '.join(ENTRIES)}") from None


def case_id(case) -> str:
    name, variant = case
    return name if variant == "default" else f"{name}[{variant}]"


def param_shapes(cfg: Config) -> dict[str, tuple]:
    """Canonical name -> shape for `cfg`, declared by the NumPy reference, nothing allocated."""
    return get(cfg.kind).reference(cfg).param_shapes()
