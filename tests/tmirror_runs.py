"""`tmirror` run as a user runs it, a subprocess `python -m conformance ...`, each distinct command line
once per test process: the tests that read one command's output (its files, its stdout, the absence of
TensorFlow's noise, its progress bar) share the run instead of paying TensorFlow's import again. Tests
that share runs are in the xdist group "tmirror", so they meet in one worker.

An argument "{out}" in a command line is this process's scratch directory. `tty=True` gives the command
a terminal for stderr (a pseudo-terminal, 100 columns), as a person at a shell has, while stdout stays a
pipe, as in `tmirror ... | grep`.
"""
import atexit
import functools
import os
import pty
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the cwd of every run: `python -m conformance` imports this checkout
OUT = Path(tempfile.mkdtemp(prefix="tmirror-runs-"))
atexit.register(shutil.rmtree, OUT, True)
GROUP = "tmirror"


@dataclass(frozen=True)
class Ran:
    args: tuple
    returncode: int
    stdout: str
    stderr: str


def command_line(*args) -> list[str]:
    return [sys.executable, "-m", "conformance", *(a.replace("{out}", str(OUT)) for a in args)]


@functools.cache
def tmirror(*args, tty=False, timeout=600) -> Ran:
    if not tty:
        r = subprocess.run(command_line(*args), capture_output=True, text=True, timeout=timeout,
                           cwd=ROOT)
        return Ran(args, r.returncode, r.stdout, r.stderr)
    return _on_a_terminal(args, timeout)


def _on_a_terminal(args, timeout) -> Ran:
    import fcntl
    import termios
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen(command_line(*args), stdout=subprocess.PIPE, stderr=follower, text=True,
                            cwd=ROOT)
    os.close(follower)
    chunks = []

    def drain():  # until the child closes its end: EIO on Linux
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stdout, _ = proc.communicate(timeout=timeout)
    reader.join(timeout=10)
    os.close(leader)
    return Ran(args, proc.returncode, stdout, b"".join(chunks).decode(errors="replace"))


@functools.cache
def gpt2_tiny_weights() -> str:
    """A safetensors file of gpt2-tiny's weights at seed 5 (not the CLI's default seed 0), for --weights."""
    from conformance import weights
    from conformance.spec import presets
    cfg = presets.get("gpt2-tiny")
    path = OUT / "gpt2-tiny-seed5.safetensors"
    weights.save(weights.initialize(cfg, seed=5), path, cfg)
    return str(path)
