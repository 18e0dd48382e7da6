"""The model families: one module each, holding one `Family` named `FAMILY`.

A module dropped in this package is found and declared; nothing else in the harness lists the
families. Their order (here, and in `tmirror models`) is the modules' alphabetical order.
"""
from __future__ import annotations

import importlib
import pkgutil

from conformance.spec.family import Family

FAMILIES: dict[str, Family] = {}
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    _family = importlib.import_module(f"{__name__}.{_module}").FAMILY
    FAMILIES[_family.name] = _family


def get(kind: str) -> Family:
    """The family of a model kind (`Config.kind`)."""
    if kind not in FAMILIES:
        raise ValueError(f"kind must be a model family {list(FAMILIES)}; received kind={kind!r}")
    return FAMILIES[kind]
