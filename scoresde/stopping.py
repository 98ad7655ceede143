"""A polite stop: SIGTERM (a preemption notice) or SIGINT (Ctrl-C) asks a long loop to stop at its next
safe point instead of killing it mid-write.

The training loop saves a checkpoint there (`scoresde.train.run`), chunked sampling keeps the chunks
already written (`scoresde.chunks.draw`). After the first signal the handlers fall back to the system's, so
a second one ends the process at once; every file is written whole or not at all (`scoresde.atomic`), so that
corrupts nothing.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any


class StopSignals:
    """A context in which SIGTERM and SIGINT set `received` (the signal's name) instead of ending the process.

    Handlers can only be installed in the main thread; elsewhere signals keep their handlers.

    Example:
        >>> with StopSignals("saving a checkpoint after this step") as stop:
        ...     while not done and stop.received is None:
        ...         step()
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, notice: str):
        """notice: what the loop does next, shown on stderr when the first signal arrives."""
        self.notice = notice
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        return self

    def _handle(self, number: int, frame: Any) -> None:
        self.received = signal.Signals(number).name
        for other in self.SIGNALS:
            signal.signal(other, signal.SIG_DFL)
        os.write(2, f"\n{self.received}: {self.notice}; a second signal stops at once.\n".encode())

    def __exit__(self, *exc: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
