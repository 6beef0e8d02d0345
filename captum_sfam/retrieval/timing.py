r"""Where a retrieval run spends its time: exclusive timers per kind of work.

A :class:`Clock` adds up wall-clock seconds per section name ("read",
"embed", "search", "maps", "write", ...). Sections nest, and each second is
counted once, in the innermost open section: the neighbour images read while
maps are made count as "read", not "maps". :func:`running` makes a clock the
current one for the duration of a run; :func:`section` times a block on the
current clock (a no-op without one), so the readers and writers of
:mod:`.data` and :mod:`.store` time themselves without being passed a clock.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional


class Clock:
    """Exclusive seconds per section name (see the module docstring)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: Dict[str, float] = {}
        self._stack: List[List[float]] = []  # [start, seconds of inner sections]

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Time the block as ``name``, less the time of sections inside it."""
        frame = [time.perf_counter(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            total = time.perf_counter() - frame[0]
            self.seconds[name] = self.seconds.get(name, 0.0) + total - frame[1]
            if self._stack:
                self._stack[-1][1] += total

    def totals(self, suffix: str = "_s") -> Dict[str, float]:
        """The seconds per section, keys ``name + suffix``, sorted by name, and
        ``other`` (the time since the clock was made outside every section)
        and ``total``."""
        total = time.perf_counter() - self.started
        values = dict(sorted(self.seconds.items()))
        values["other"] = max(0.0, total - sum(self.seconds.values()))
        values["total"] = total
        return {f"{k}{suffix}": round(v, 6) for k, v in values.items()}


_current: Optional[Clock] = None


@contextmanager
def running(clock: Clock) -> Iterator[Clock]:
    """Make ``clock`` the current clock inside the block."""
    global _current
    previous, _current = _current, clock
    try:
        yield clock
    finally:
        _current = previous


def current() -> Optional[Clock]:
    """The current clock, or None."""
    return _current


@contextmanager
def section(name: str) -> Iterator[None]:
    """Time the block as ``name`` on the current clock (none: not timed)."""
    if _current is None:
        yield
        return
    with _current.section(name):
        yield


__all__ = ["Clock", "current", "running", "section"]
