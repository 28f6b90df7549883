"""A small progress bar for management commands (drawn only on a terminal)."""

from __future__ import annotations

import time


class ProgressBar:
    """``[#######.............]  35%  1,200 records``, redrawn in place at most 10 times/s."""

    width = 30

    def __init__(self, out, total: int, unit: str = ""):
        self.out = out
        self.total = max(total, 1)
        self.unit = unit
        self.enabled = hasattr(out, "isatty") and out.isatty()
        self._last_draw = 0.0
        self._drawn = False

    def update(self, done: int, note: str = "") -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last_draw < 0.1:
            return
        self._last_draw = now
        fraction = min(done / self.total, 1.0)
        filled = int(fraction * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        self.out.write(f"\r[{bar}] {fraction:4.0%}  {note}", style_func=_plain, ending="")
        self.out.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.out.write("\r" + " " * (self.width + 40) + "\r", style_func=_plain, ending="")
            self.out.flush()


def _plain(text: str) -> str:
    return text  # Django styles stderr as errors by default; progress is not an error
