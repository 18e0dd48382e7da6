"""The progress bar every long `tmirror` command draws: one helper, on stderr, stdout left alone.

A command's stdout is its result (a verdict line, a table, a path) and stays parseable; the bar goes to
stderr. Mode `auto` (the default) draws it only when stderr is a terminal, as `pip` and `tqdm` itself
do: a bar redraws one line with carriage returns, which a log file or a CI page would keep as hundreds
of partial lines, so wherever nobody watches there is none. `on` draws it anyway (a terminal that does
not say it is one, a test), `off` never (a person who wants quiet). `--progress auto|on|off` on every
command chooses.

A command's own messages ("exporting ...", "wrote ...") go through `say`: above the bar when it is
drawn (tqdm.write keeps the bar whole), plain lines on stderr when it is not, so the log reads the same.
"""
from __future__ import annotations

import sys

MODES = ("auto", "on", "off")


def drawn(mode: str, stream) -> bool:
    """Whether a bar is drawn on `stream` in `mode`."""
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {list(MODES)}; received {mode!r}")
    if mode == "auto":
        isatty = getattr(stream, "isatty", None)
        return bool(isatty and isatty())
    return mode == "on"


class Progress:
    """`with Progress(total, "report", mode) as p:` then `p.step(label)` per unit of work done (or
    `p.at(value, label)` where progress is a measure such as seconds), and `p.say(line)` for a message.
    `total=None`: a count and the elapsed time, where the amount of work is not known up front."""

    def __init__(self, total: float | None = None, desc: str = "", mode: str = "auto", stream=None,
                 unit: str = "step"):
        self.stream = sys.stderr if stream is None else stream
        self.bar = None
        if drawn(mode, self.stream):
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, file=self.stream, leave=False, unit=unit, dynamic_ncols=True,
                            bar_format=None if total is None else "{desc}: {percentage:3.0f}%|{bar}| "
                            "{n_fmt}/{total_fmt} [{elapsed}<{remaining}]")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def step(self, label: str | None = None, n: float = 1):
        if self.bar is not None:
            if label:
                self.bar.set_description_str(label, refresh=False)
            if n:
                self.bar.update(n)
            else:  # a new label at the same count: shown now (update(0) waits for its next interval)
                self.bar.refresh()

    def at(self, value: float, label: str | None = None):
        if self.bar is not None:
            value = min(value, self.bar.total) if self.bar.total is not None else value
            self.step(label, value - self.bar.n)

    def say(self, line: str):
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)
