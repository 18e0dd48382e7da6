"""Canonical weights one tensor at a time: the weights of a model larger than memory.

A `Source` hands out canonical tensors (names and layout as `weights.initialize` makes them) by
name, whole, as a block of rows or columns, or as the rows of a table at some ids, and never
holds the model:

    cfg, source = stream.open_source("llama3-8b", None, seed=0)     # weights.initialize's numbers
    cfg, source = stream.open_source("llama3-8b", "hf_dir", 0)        # a Hugging Face checkpoint
    layer = source.mapping(source.names("layers.3."))                 # a Mapping, read on access
    table = source.rows("embeddings.token.table", np.unique(ids))     # the rows a lookup needs

`Initialized` draws each tensor from its own stream exactly as `weights.initialize` does
(`canonical.initialize_rows`): a layer made alone is the layer the whole model gets, and a table
read in blocks of rows is the whole table, block by block (columns of a table: every row block
is drawn, its columns kept). `Safetensors` reads safetensors files through `safe_open` and
`get_slice`: the files are memory-mapped and only the bytes asked for are read, through the
family's Hugging Face table for a checkpoint directory (its renames, transposes and fused
tensors) or as they are for a file of canonical names (`weights.save`). `check` reads only the
headers: a checkpoint that lacks a tensor is refused before anything runs, naming the first
missing tensor and its layer.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from conformance.core.config import Config
from conformance.spec import presets, registry
from conformance.weights import canonical, checkpoints

BLOCK_BYTES = 32 << 20  # rows drawn (or read) at a time when a tensor is read in pieces


class Source:
    """Canonical tensors of `cfg`, read on request. `description` says where they come from; `identity`
    is what a resumed run must find unchanged."""

    description = ""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.shapes = registry.param_shapes(cfg)

    def names(self, prefix: str = "") -> list[str]:
        """The canonical names under `prefix` (e.g. "layers.3."), in the model's declaration order."""
        return [n for n in self.shapes if n.startswith(prefix)]

    def tensor(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def block(self, name: str, axis: int, start: int, stop: int) -> np.ndarray:
        """tensor[start:stop] (axis 0) or tensor[:, start:stop] (axis 1)."""
        raise NotImplementedError

    def rows(self, name: str, index: np.ndarray) -> np.ndarray:
        """tensor[index] for sorted, unique row indices: the rows an embedding lookup reads."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise a WeightsError naming the first tensor this source cannot give (none: initialize)."""

    def identity(self) -> dict:
        raise NotImplementedError

    def mapping(self, names, prefix: str = "") -> "Tensors":
        """The tensors `names` as a Mapping under the names less `prefix`, each read when it is looked up
        and held by no one but the caller."""
        return Tensors(self, list(names), prefix)

    def __getstate__(self):
        """Pickled (sent to a worker) without its open files and half-read streams."""
        return {k: {} if k in ("_cursors", "_handles") else v for k, v in self.__dict__.items()}

    def nbytes(self, names) -> int:
        """float32 bytes of `names`: what holding them as canonical tensors costs."""
        return sum(4 * int(np.prod(self.shapes[n])) for n in names)


class Tensors(Mapping):
    """Canonical tensors read from a `Source` on each lookup."""

    def __init__(self, source: Source, names: list, prefix: str = ""):
        self.source, self.prefix = source, prefix
        self.keys_ = [n[len(prefix):] for n in names]

    def __getitem__(self, key):
        if key not in self.keys_:
            raise KeyError(key)
        return self.source.tensor(self.prefix + key)

    def __iter__(self):
        return iter(self.keys_)

    def __len__(self):
        return len(self.keys_)

    def __contains__(self, key):
        return key in self.keys_


class Initialized(Source):
    """`weights.initialize(cfg, seed, std)`, one tensor (or one block of rows) at a time."""

    def __init__(self, cfg: Config, seed: int = 0, std: float = 0.02):
        super().__init__(cfg)
        self.seed, self.std = seed, std
        self.description = f"weights.initialize(seed={seed})"
        self._cursors: dict[str, _Cursor] = {}

    def identity(self):
        return {"source": "initialize", "seed": self.seed, "std": self.std}

    def tensor(self, name):
        return canonical.initialize_tensor(self.cfg, name, self.shapes[name], self.seed, self.std)

    def _stream(self, name):
        shape = self.shapes[name]
        rows = max(1, BLOCK_BYTES // max(4 * int(np.prod(shape[1:])), 1))
        return canonical.initialize_rows(self.cfg, name, shape, self.seed, self.std, rows)

    def block(self, name, axis, start, stop):
        if axis == 0:
            cursor = self._cursors.get(name)
            if cursor is None or start < cursor.start:  # a stream only goes forward: start it again
                cursor = self._cursors[name] = _Cursor(self._stream(name))
            return cursor.take(start, stop)
        # copies, not views: each block is let go as soon as its columns are out
        return np.concatenate([b[:, start:stop].copy() for b in self._stream(name)], axis=0)

    def rows(self, name, index):
        index = np.asarray(index)
        out, first = [], 0
        for b in self._stream(name):
            inside = index[(index >= first) & (index < first + len(b))]
            out.append(b[inside - first])
            first += len(b)
        return np.concatenate(out, axis=0)


class _Cursor:
    """A tensor's stream of row blocks, read forward: the rows [start, stop) from where it stands."""

    def __init__(self, blocks):
        self.blocks, self.start, self.current = blocks, 0, None

    def take(self, start, stop):
        parts = []
        while True:
            if self.current is None:
                self.current = next(self.blocks)
            end = self.start + len(self.current)
            if end > start:
                parts.append(self.current[max(start - self.start, 0):stop - self.start])
            if end >= stop:
                return np.concatenate(parts, axis=0)
            self.start, self.current = end, None


class Safetensors(Source):
    """safetensors files read tensor by tensor: `table` maps each canonical name to (file, stored name,
    leaf) (a checkpoint's layout: `conformance.spec.leaves.Leaf`; None: stored canonically)."""

    def __init__(self, cfg: Config, path: Path, table: dict, description: str):
        super().__init__(cfg)
        self.path, self.table, self.description = Path(path), table, description
        self._handles: dict[Path, object] = {}

    def identity(self):
        files = sorted({file for file, _, _ in self.table.values()})
        return {"source": str(self.path.resolve()),
                "files": {f.name: [os.stat(f).st_size, int(os.stat(f).st_mtime)] for f in files}}

    def _open(self, file: Path):
        from safetensors import safe_open
        if file not in self._handles:
            self._handles[file] = safe_open(str(file), "np")
        return self._handles[file]

    def _read(self, name, index=None) -> np.ndarray:
        """The stored tensor of `name`, or `index` of it (a tuple of slices), as NumPy (bfloat16 as float32)."""
        file, stored, _ = self.table[name]
        piece = self._open(file).get_slice(stored)
        if piece.get_dtype() == "BF16":  # NumPy has no bfloat16: torch reads it, exactly, as float32
            from safetensors import safe_open
            with safe_open(str(file), "pt") as f:
                t = f.get_slice(stored)
                return (t[index] if index is not None else t[:]).float().numpy()
        return piece[index] if index is not None else piece[:]

    def tensor(self, name):
        _, _, leaf = self.table[name]
        a = self._read(name)
        return np.ascontiguousarray(a if leaf is None else leaf.to_canonical(a, self.cfg))

    def _stored_axis(self, name, axis):
        """The stored tensor's axis that is canonical `axis`; None where only the whole tensor maps (fused)."""
        _, _, leaf = self.table[name]
        if leaf is None or (leaf.layout == "same" and leaf.part is None):
            return axis
        if leaf.layout == "transpose" and leaf.part is None:
            return 1 - axis
        return None

    def block(self, name, axis, start, stop):
        _, _, leaf = self.table[name]
        stored = self._stored_axis(name, axis)
        if stored is None:
            whole = self.tensor(name)
            return np.ascontiguousarray(whole[start:stop] if axis == 0 else whole[:, start:stop])
        index = (slice(start, stop),) if stored == 0 else (slice(None), slice(start, stop))
        a = self._read(name, index)
        return np.ascontiguousarray(a if leaf is None else leaf.to_canonical(a, self.cfg))

    def rows(self, name, index):
        return np.concatenate([self.block(name, 0, int(i), int(i) + 1) for i in np.asarray(index)], axis=0)

    def check(self):
        """Every canonical tensor is in the files with its shape: the first one missing named, with its layer."""
        problems = []
        for name, shape in self.shapes.items():
            file, stored, leaf = self.table.get(name, (None, None, None))
            where = f"{stored} (canonical {name})" if stored and stored != name else name
            if file is None:
                problems.append((name, f"lacks {where}"))
                continue
            got = tuple(self._open(file).get_slice(stored).get_shape())
            if leaf is not None:
                got = tuple(leaf.to_canonical(np.empty(got, np.int8), self.cfg).shape)
            if got != shape:
                problems.append((name, f"has {where} of shape {got}, expected {shape}"))
        if problems:
            name, what = problems[0]
            layer = re.search(r"^\w+\.(\d+)\.", name)
            place = f"layer {layer.group(1)}" if layer else "outside the layers"
            more = f" (the first of {len(problems)} problems)" if len(problems) > 1 else ""
            raise canonical.WeightsError(f"{self.description}: {place} {what}{more}")


def _stored_tensors(files: list[Path]) -> dict[str, Path]:
    """Stored tensor name -> its file, from the safetensors headers only."""
    from safetensors import safe_open
    found = {}
    for file in files:
        try:
            with safe_open(str(file), "np") as f:
                found.update({k: file for k in f.keys()})
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise canonical.WeightsError(f"weights file {file} is not a readable safetensors file: {e}") from None
    return found


def hf_directory(path: Path) -> Safetensors:
    """A Hugging Face checkpoint directory (config.json and one or more *.safetensors), through its
    family's table: nothing is read beyond config.json and the files' headers."""
    hf = checkpoints._read_json(path / "config.json")
    arch, cls = checkpoints._architecture(hf)
    cfg = checkpoints.config_from_hf(hf, arch, cls)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise canonical.WeightsError(f"no *.safetensors file in Hugging Face checkpoint directory {path} "
                                     f"(a streamed run reads safetensors only)")
    stored = {checkpoints._modern(k): (k, f) for k, f in _stored_tensors(files).items()}
    prefix = arch.prefix if any(k.startswith(arch.prefix) for k in stored) else ""
    table = {}
    for name, hf_name, leaf in checkpoints._rows(arch, cfg, prefix):
        original, file = stored.get(hf_name, (hf_name, None))
        table[name] = (file, original, leaf)
    return Safetensors(cfg, path, table, f"Hugging Face checkpoint {path}")


def canonical_file(path: Path, cfg: Config) -> Safetensors:
    """A safetensors file of canonical names (`weights.save`)."""
    stored = _stored_tensors([path])
    return Safetensors(cfg, path, {n: (stored[n], n, None) if n in stored else (None, n, None)
                                   for n in registry.param_shapes(cfg)}, f"safetensors file {path}")


def open_source(preset: str, weights_path: str | None, seed: int = 0, layers: int | None = None) -> tuple[Config, Source]:
    """(config, source) for a preset and optional weights (a Hugging Face directory or a safetensors
    file), as `report.runner.resolve` reads them, never loading them. `layers`: the first `layers`
    layers only (a model's width at a depth that is quick to run)."""
    if weights_path is None:
        cfg = _first_layers(presets.get(preset), layers)
        return cfg, Initialized(cfg, seed)
    path = Path(weights_path)
    if path.is_dir():
        source = hf_directory(path)
    elif path.is_file():
        cfg = canonical.load_config(path) or presets.get(preset)
        source = canonical_file(path, cfg)
    else:
        raise canonical.WeightsError(f"weights not found: {path} (a Hugging Face directory or a safetensors file)")
    if layers is not None:
        cfg = _first_layers(source.cfg, layers)
        table = {n: source.table[n] for n in registry.param_shapes(cfg)}
        source = Safetensors(cfg, source.path, table, source.description + f", its first {layers} layers")
    return source.cfg, source


def _first_layers(cfg: Config, layers: int | None) -> Config:
    if layers is None:
        return cfg
    if not 1 <= layers <= cfg.num_layers:
        raise ValueError(f"--layers must be between 1 and the model's num_layers={cfg.num_layers}; received {layers}")
    return cfg.replace(num_layers=layers, layer_types=cfg.layer_types[:layers])
