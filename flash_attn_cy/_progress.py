"""Progress of a long command (``verify``, ``bench``) on stderr, so a minutes-long run is never silent.

On a terminal one line is rewritten in place: which case of how many is running, the time elapsed and an estimate
of the time left (from the cases finished so far). When stderr is not a terminal (a log file, CI, a pipe) a
carriage-return line would be noise, so each finished case gets a line of its own instead. ``quiet`` prints
nothing. stdout (the results table) is never touched.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


class Progress:
    """Reports case i of n. ``mode``: "auto" (a rewritten line on a terminal, else one line per finished case),
    "tty", "lines" or "quiet"."""

    def __init__(self, what: str, total: int, mode: str = "auto", stream: Optional[TextIO] = None,
                 clock: Callable[[], float] = time.perf_counter):
        if mode not in ("auto", "tty", "lines", "quiet"):
            raise ValueError(f"mode: expected auto, tty, lines or quiet, got {mode!r}")
        self.stream = sys.stderr if stream is None else stream
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "tty" if callable(isatty) and isatty() else "lines"
        self.what, self.total, self.mode, self.clock = what, max(0, int(total)), mode, clock
        self.t0 = clock()
        self.finished = 0
        self._dirty = False  # a tty line is on screen and must be cleared before other output

    def _timing(self, running: bool) -> str:
        elapsed = self.clock() - self.t0
        text = f"{_duration(elapsed)} elapsed"
        if self.finished:
            left = elapsed / self.finished * (self.total - self.finished)
            text += f", ETA {_duration(left)}" if self.finished < self.total else ""
        elif running:
            text += ", ETA -"
        return text

    def _tty(self, text: str) -> None:
        self.stream.write("\r\033[K" + text)
        self.stream.flush()
        self._dirty = True

    def start(self, label: str) -> None:
        """Case ``finished + 1`` (``label``) begins: on a terminal the line says so while it runs."""
        if self.mode == "tty":
            i = min(self.finished + 1, self.total)
            self._tty(f"{self.what}: case {i} of {self.total} ({label}), {self._timing(True)}")

    def done(self, label: str) -> None:
        """A case finished; ``label`` says what it was and how it went."""
        self.finished += 1
        if self.mode == "quiet":
            return
        line = f"{self.what}: case {self.finished} of {self.total} done: {label} ({self._timing(False)})"
        if self.mode == "tty":
            self._tty(line)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Clear the terminal line (the results follow on stdout)."""
        if self.mode == "tty" and self._dirty:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._dirty = False
