"""Canonical weights: a flat dict of NumPy arrays under canonical names, made, checked and stored.

Files are safetensors: a header and raw buffers, nothing executable, nothing unpickled.
The config travels in the file's metadata, so a weights file says what it is.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np

from conformance.spec import registry
from conformance.core.config import Config


class WeightsError(ValueError):
    """Weights that do not fit the model: the message lists every offending name."""


def initialize(cfg: Config, seed: int = 0, std: float = 0.02) -> dict[str, np.ndarray]:
    """Deterministic float32 weights for `cfg`.

    Each tensor draws from its own stream seeded by (seed, name), so adding a parameter
    never changes the others, and any one tensor can be made alone (`initialize_tensor`), or a
    table row block by row block (`initialize_rows`), with the same numbers. Kernels and tables
    ~ N(0, std) as in BERT and GPT-2. Biases
    and layer-norm shifts ~ N(0, std) and gains ~ 1 + N(0, std) rather than exactly 0 and 1:
    a zero bias would hide a bias that is dropped, and a unit gain one that is ignored.
    Gemma's RMSNorm scales by (offset + gamma): its gains start at 1 - offset + N(0, std), so the
    scale it applies starts near 1 there too (transformers initializes them to 0).
    """
    return {name: initialize_tensor(cfg, name, shape, seed, std) for name, shape in registry.param_shapes(cfg).items()}


def initialize_tensor(cfg: Config, name: str, shape: tuple, seed: int = 0, std: float = 0.02) -> np.ndarray:
    """The tensor `name` of `initialize(cfg, seed, std)`, made alone."""
    return next(initialize_rows(cfg, name, shape, seed, std, rows=max(shape[0], 1) if shape else 1))


def initialize_rows(cfg: Config, name: str, shape: tuple, seed: int = 0, std: float = 0.02, rows: int = 4096):
    """The tensor `name` of `initialize(cfg, seed, std)` as successive blocks of `rows` rows (axis 0).

    The blocks are drawn one after another from the tensor's one stream, and concatenated they
    are the whole tensor bit for bit: numpy's Generator hands out the same sequence of normals
    whether asked for it at once or in pieces (PCG64 keeps the unused half of a 64-bit draw for
    the next float32 call; `tests/test_stream.py` checks blocks of awkward sizes). A table too
    large to hold is read this way: the embedding lookup keeps the rows it needs, the head runs
    block by block."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    gain = np.float32(1.0 - (cfg.rms_norm_offset if cfg.norm == "rms" else 0.0))
    total = shape[0] if shape else 1
    for start in range(0, max(total, 1), rows):
        block = (min(rows, total - start), *shape[1:]) if shape else ()
        w = rng.standard_normal(block, dtype=np.float32) * np.float32(std)
        yield w + gain if name.endswith(".gamma") else w


def check(cfg: Config, weights: dict[str, np.ndarray]) -> None:
    """Raise one `WeightsError` naming every missing, unexpected or mis-shaped tensor."""
    expected = registry.param_shapes(cfg)
    problems = []
    for name in expected.keys() - weights.keys():
        problems.append(f"missing {name}: expected shape {expected[name]}")
    for name in weights.keys() - expected.keys():
        problems.append(f"unexpected {name}: shape {tuple(np.shape(weights[name]))}")
    for name in expected.keys() & weights.keys():
        got = tuple(np.shape(weights[name]))
        if got != expected[name]:
            problems.append(f"mis-shaped {name}: expected {expected[name]}, received {got}")
        elif not np.issubdtype(np.asarray(weights[name]).dtype, np.floating):
            problems.append(f"non-float {name}: received dtype {np.asarray(weights[name]).dtype}")
        elif not np.isfinite(weights[name]).all():
            problems.append(f"non-finite {name}: {int((~np.isfinite(weights[name])).sum())} NaN/inf values")
    if problems:
        raise WeightsError(f"{len(problems)} weight problem(s) for {cfg.kind} "
                           f"(d_model={cfg.d_model}, layers={cfg.num_layers}):\n  "
                           + "\n  ".join(sorted(problems)))


def save(weights: dict[str, np.ndarray], path, cfg: Config | None = None) -> None:
    from safetensors.numpy import save_file

    metadata = {"format": "transformer-mirror"}
    if cfg is not None:
        metadata["config"] = json.dumps(cfg.to_dict())
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(path), metadata=metadata)


def load(path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    path = _existing(path)
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise WeightsError(f"weights file {path} is not a readable safetensors file: {e}") from None


def load_config(path) -> Config | None:
    """The Config stored in a weights file's metadata, or None if it has none."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise WeightsError(f"weights file {path} is not a readable safetensors file: {e}") from None
    return Config.from_dict(json.loads(meta["config"])) if "config" in meta else None


def fingerprint(weights: dict[str, np.ndarray]) -> str:
    """A short hash of names, dtypes and bytes: equal fingerprints, identical weights."""
    h = hashlib.sha256()
    for name in sorted(weights):
        a = np.ascontiguousarray(weights[name])
        h.update(f"{name}:{a.dtype}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def count(weights: dict[str, np.ndarray]) -> int:
    return sum(int(np.prod(np.shape(w))) for w in weights.values())


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    return path
