"""Named model configurations with the published dimensions, collected from the families
(`conformance.spec.families`; each family's module says where its numbers come from)."""
from __future__ import annotations

from conformance.core.config import Config
from conformance.spec.families import FAMILIES

PRESETS: dict[str, Config] = {name: cfg for family in FAMILIES.values() for name, cfg in family.presets.items()}


def names() -> list[str]:
    return list(PRESETS)


def get(name: str) -> Config:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
