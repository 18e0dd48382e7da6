"""Files written whole or not at all, and paths refused by name before any work is done.

Every file the project writes (weights, checkpoints, reports, walkthroughs, tables, ONNX graphs)
goes through `write` or `write_all`: the bytes go to a temporary file beside the target, which
is renamed onto it only once complete (`os.replace`, atomic on one file system). A write that
fails part way (a full disk, an exception while rendering) leaves the old file, or none, never
half a file; `write_all` renames a set of files only after every one of them is written.

`directory` and `file` check a target before the work that produces it (the CLI calls them on
`--out` first), so a bad path costs nothing and is named: it is a file where a folder is
needed, a folder where a file is, or lies under something that is not a folder.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Union

Data = Union[str, bytes, Callable[[Path], None]]  # text, bytes, or a writer given the temporary path


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: a written file gets the mode a plain open() would give it (mkstemp's is 0600)


class WriteError(ValueError):
    """A path that cannot be written: names the path and why."""


def _ancestor(folder: Path, what: str, target: Path) -> Path:
    """The nearest existing folder at or above `folder` (where `target` goes), which must be a folder."""
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise WriteError(f"{what} {target} lies under {parent}, which is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise WriteError(f"{what} {target} cannot be created: {parent} is not writable")
            return parent
    return Path(".")


def directory(path, what: str = "directory") -> Path:
    """`path` as a folder that exists or can be made (made by the writer, not here)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise WriteError(f"{what} {path} must be a folder; received a file")
    _ancestor(path, what, path)
    return path


def file(path, what: str = "file", parents: bool = True) -> Path:
    """`path` as a file that can be written: not a folder, and its folder exists (or, with `parents`,
    can be made)."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"{what} {path} must be a file; received a folder")
    if not parents and not path.parent.is_dir():
        state = "is a file" if path.parent.exists() else "does not exist"
        raise WriteError(f"{what} {path} cannot be written: its folder {path.parent} {state}")
    _ancestor(path.parent, what, path)
    return path


def write(path, data: Data, what: str = "file", parents: bool = True) -> Path:
    """Write `data` to `path` atomically; `parents` makes missing folders first."""
    return write_all({path: data}, what, parents)[0]


def write_all(files: dict, what: str = "file", parents: bool = True) -> list[Path]:
    """Write every {path: data} to a temporary file, then rename them all: all of them or none."""
    targets = [file(p, what, parents) for p in files]
    done = []
    try:
        for path, data in zip(targets, files.values()):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            done.append((Path(tmp), path))
            if callable(data):
                data(Path(tmp))
            else:
                Path(tmp).write_bytes(data.encode() if isinstance(data, str) else data)
        for tmp, path in done:
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
    except OSError as e:
        raise WriteError(f"{what} {done[-1][1] if done else targets[0]} cannot be written: "
                         f"{e.strerror or e}") from None
    finally:
        for tmp, _ in done:
            tmp.unlink(missing_ok=True)
    return targets
