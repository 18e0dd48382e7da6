"""Canonical weights: a flat dict of NumPy arrays under canonical names, made, checked and stored.

Files are safetensors: a header and raw buffers, nothing executable, nothing unpickled.
The config travels in the file's metadata, so a weights file says what it is.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from conformance.core import files, lora as lora_lib
from conformance.core.checks import FLOAT_DTYPES
from conformance.core.config import Config
from conformance.spec import registry


STORED_DTYPES = FLOAT_DTYPES + ("int8",)  # what a weights file holds: int8 for the kernels of int8 weights


class WeightsError(ValueError):
    """Weights that do not fit the model: the message lists every offending name."""


RANDOM = "random_features"  # a fixed random projection (numpy_ref.linear_attention), drawn N(0, 1)


def initialize(cfg: Config, seed: int = 0, std: float = 0.02) -> dict[str, np.ndarray]:
    """Deterministic float32 weights for `cfg`.

    Each tensor draws from its own stream seeded by (seed, name), so adding a parameter
    never changes the others, and any one tensor can be made alone (`initialize_tensor`), or a
    table row block by row block (`initialize_rows`), with the same numbers. Kernels and tables
    ~ N(0, std) as in BERT and GPT-2. Biases
    and layer-norm shifts ~ N(0, std) and gains ~ 1 + N(0, std) rather than exactly 0 and 1:
    a zero bias would hide a bias that is dropped, and a unit gain one that is ignored.
    Performer's random features (`random_features`) ~ N(0, 1): FAVOR+'s projection, the same in every framework.
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
        w = rng.standard_normal(block, dtype=np.float32) * np.float32(1.0 if name.endswith(RANDOM) else std)
        yield w + gain if name.endswith(".gamma") else w


def shapes(cfg: Config, lora=None) -> dict[str, tuple]:
    """{canonical name: shape} of `cfg`'s model, with the adapters of `lora` (a LoraConfig) if given."""
    expected = registry.param_shapes(cfg)
    if lora is None:
        return expected
    return {**expected, **lora_lib.adapter_shapes(lora_lib.linear_shapes(expected, lora), lora)}


def check(cfg: Config, weights: Mapping[str, np.ndarray], finite: bool = True, lora=None) -> None:
    """Raise one `WeightsError` naming every missing, unexpected, mis-shaped, non-array, non-float or
    (unless `finite=False`) non-finite tensor; with `lora`, the adapters are expected too."""
    if not isinstance(weights, Mapping):
        raise WeightsError(f"weights must be a mapping {{canonical name: np.ndarray}} (weights.initialize(cfg), "
                           f"weights.load(path), or a streamed Source.mapping read tensor by tensor); received "
                           f"{type(weights).__name__}")
    expected = shapes(cfg, lora)
    int8 = set(int8_kernels(expected))
    problems = []
    for name in expected.keys() - weights.keys():
        problems.append(f"missing {name}: expected shape {expected[name]}")
    for name in weights.keys() - expected.keys():
        problems.append(f"unexpected {name}: shape {tuple(np.shape(weights[name]))}")
    for name in expected.keys() & weights.keys():
        w = weights[name]
        if not isinstance(w, np.ndarray):
            problems.append(f"non-array {name}: expected a NumPy array, received {type(w).__name__}")
        elif w.shape != expected[name]:
            problems.append(f"mis-shaped {name}: expected {expected[name]}, received {w.shape}")
        elif name in int8 and w.dtype.name != "int8":
            problems.append(f"non-int8 {name}: expected int8 (weight_quantization='int8'), received dtype {w.dtype.name}")
        elif name not in int8 and w.dtype.name not in FLOAT_DTYPES:
            problems.append(f"non-float {name}: expected one of {FLOAT_DTYPES}, received dtype {w.dtype.name}")
        elif finite and not np.isfinite(w).all():
            problems.append(f"non-finite {name}: {int((~np.isfinite(w)).sum())} NaN/inf values")
    if problems:
        raise WeightsError(f"{len(problems)} weight problem(s) for {cfg.kind} "
                           f"(d_model={cfg.d_model}, layers={cfg.num_layers}):\n  "
                           + "\n  ".join(sorted(problems)))


def int8_kernels(shapes) -> list[str]:
    """The kernels an int8 weight set holds as int8: each `P.kernel` beside a `P.kernel_scale`
    (`Config.weight_quantization="int8"`, `conformance.weights.quantize`)."""
    return [name for name in shapes if name.rpartition(".")[2] == "kernel" and f"{name}_scale" in shapes]


def save(weights: dict[str, np.ndarray], path, cfg: Config | None = None) -> None:
    """Write `weights` (and `cfg`, in the file's metadata) to a safetensors file, whole or not at all:
    through a temporary file renamed onto `path` (`core.files`); its folder must exist."""
    from safetensors.numpy import save_file

    if not isinstance(weights, dict):
        raise WeightsError(f"weights must be a dict {{canonical name: np.ndarray}}; received {type(weights).__name__}")
    bad = sorted(f"{k} ({type(v).__name__ if not isinstance(v, np.ndarray) else v.dtype.name})"
                 for k, v in weights.items() if not isinstance(v, np.ndarray) or v.dtype.name not in STORED_DTYPES)
    if bad:
        raise WeightsError(f"weights must be NumPy arrays of a floating dtype {FLOAT_DTYPES} (or int8, an int8 "
                           f"weight set's kernels); received {', '.join(bad)}")
    if cfg is not None and not isinstance(cfg, Config):
        raise WeightsError(f"cfg must be a Config or None; received {type(cfg).__name__}")
    metadata = {"format": "transformer-mirror"}
    if cfg is not None:
        metadata["config"] = json.dumps(cfg.to_dict())
    tensors = {k: np.ascontiguousarray(v) for k, v in weights.items()}
    files.write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), "weights file", parents=False)


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
    if "config" not in meta:
        return None
    try:
        fields = json.loads(meta["config"])
    except json.JSONDecodeError as e:
        raise WeightsError(f"weights file {path}: metadata 'config' must be a JSON object of Config fields; "
                           f"received text that is not JSON ({e})") from None
    if not isinstance(fields, dict):
        raise WeightsError(f"weights file {path}: metadata 'config' must be a JSON object of Config fields; "
                           f"received a JSON {type(fields).__name__}")
    try:
        return Config.from_dict(fields)
    except ValueError as e:
        raise WeightsError(f"weights file {path}: metadata 'config': {e}") from None


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
