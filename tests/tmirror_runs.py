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


# One cheap command line per command (tiny presets, one case, one framework): the noise test (tests/test_cli.py) runs
# each; the tests that read a command's output read the same run. "figures" has no cheap form (its
# quickest run, --quick, takes half a minute), so its line runs in the --full tier only.
CHEAP = {
    "models": ("models",),
    "report": ("report", "bert-tiny", "--seq-len", "16", "--batch", "2", "--out", "{out}/report"),
    "compare": ("compare", "gpt2-tiny", "--weights", "{gpt2_weights}", "--seq-len", "8", "--frameworks", "torch,tf",
                "--dtype", "float64"),
    "trace": ("trace", "bert-tiny", "--op", "encoder.0.attention.probs", "--seq-len", "8"),
    "explain": ("explain", "multi_head_attention", "--variant", "causal"),
    "matrix": ("matrix", "--cases", "linear", "--frameworks", "tf", "--dtype", "float32", "--out", "{out}/matrix.md"),
    "export": ("export", "bert-tiny", "--framework", "torch", "--exporter", "torchscript",
               "--out", "{out}/bert-tiny.onnx"),
    "tolerances": ("tolerances", "--cases", "linear", "--dtypes", "float32", "--frameworks", "tf", "--regimes",
                   "suite", "--out", "{out}/tolerances.md", "--evidence", "{out}/tolerances.json"),
    "gpu-check": ("gpu-check", "--device", "cpu", "--budget-seconds", "1", "--out", "{out}/gpu"),
    "figures": ("figures", "--quick", "--out", "{out}/docs"),
    "compiled": ("compiled", "bert-tiny", "--frameworks", "tf", "--modes", "function", "--modules", "none", "--seq-len", "8"),
    "quantize": ("quantize", "gpt2-tiny", "--frameworks", "numpy,torch", "--seq-len", "8",
                 "--out", "{out}/gpt2-tiny-int8.safetensors"),
}
ON_A_TERMINAL = {"matrix"}  # its stderr a terminal: the progress bar drawn (test_progress_bar_...)
FULL_ONLY = {"figures"}


def run_of(command: str) -> Ran:
    """`command`'s cheap run (CHEAP), shared by every test that reads it."""
    if command not in CHEAP:
        raise KeyError(f"tmirror {command} has no cheap command line in tests/tmirror_runs.py CHEAP; add one")
    args = tuple(a.replace("{gpt2_weights}", gpt2_tiny_weights()) for a in CHEAP[command])
    return tmirror(*args, tty=command in ON_A_TERMINAL)
