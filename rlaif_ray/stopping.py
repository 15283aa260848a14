"""A graceful stop on request: SIGTERM (`scancel --signal=TERM`, `ray job stop`, a container runtime) or
SIGUSR1 (Slurm's `--signal=B:USR1@300` warning before the time limit, forwarded by the launcher) asks a
job to finish the step in progress, checkpoint and exit 0; `--resume` continues from there.

    with StopSignal() as stop:
        for step in ...:
            ...
            if stop.requested:
                save a checkpoint; break

Handlers are installed only in the main thread (signal.signal refuses elsewhere) and restored on exit.
Nested uses share one flag: the CLI holds one around a resumable job, so a signal that arrives while
the job is still starting (before its loop holds its own) is not lost; the flag clears when the
outermost one exits.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)
_shared = {"requested": False, "signum": None, "depth": 0}


class StopSignal:
    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1),
                 on_stop: Callable[[], None] | None = None, what: str = "stopping after the step in progress"):
        self.signals, self.on_stop, self.what = signals, on_stop, what
        self._old: dict = {}

    @property
    def requested(self) -> bool:
        return _shared["requested"]

    def _handle(self, signum, _frame) -> None:
        _shared.update(requested=True, signum=signum)
        log.warning("signal %s: %s (re-run with --resume to continue)", signal.Signals(signum).name, self.what)
        if self.on_stop is not None:
            self.on_stop()

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.signals}
        _shared["depth"] += 1
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}
        _shared["depth"] -= 1
        if _shared["depth"] == 0:
            _shared.update(requested=False, signum=None)
