"""Preemption: a signal only sets a flag; all ranks agree on it at a step boundary (moco.md §5.5).

Schedulers announce the end of a job with a signal (SLURM's ``--signal=USR1@120``, submitit's
USR2, SIGTERM on ``scancel`` or at a time limit). Saving inside a signal handler is unsafe (the
checkpoint needs collectives, and the handler may interrupt one), so the handler only records the
request. The training loop all-reduces the local flags once per step (a sum > 0 is the MAX), so
every rank stops after the *same* step, even when only one of them was signalled. The process
then exits with :data:`EXIT_PREEMPTED`, which launchers read as "checkpointed, requeue me".
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

#: Exit status of a run that saved a checkpoint because it was asked to stop (EX_TEMPFAIL).
EXIT_PREEMPTED = 75
#: The signals that request a checkpoint-and-exit.
SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class PreemptionFlag:
    """Context manager: installs flag-setting handlers for :data:`SIGNALS`, restores the old ones.

    Handlers can only be installed from the main thread; elsewhere (e.g. a Ray worker thread) the
    flag stays usable through :meth:`request` and a warning says signals are not caught.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = SIGNALS) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> PreemptionFlag:
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: %s will not trigger a checkpoint",
                        ", ".join(s.name for s in self.signals))
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.request(signal.Signals(signum))

    def request(self, sig: signal.Signals | None = None) -> None:
        """Record a stop request (what the handler does; callable directly, e.g. in tests)."""
        if self.received is None:
            self.received = sig or signal.SIGTERM
            log.warning("received %s: will checkpoint and exit after the current step",
                        self.received.name)

    @property
    def requested(self) -> bool:
        """Whether *this* process was asked to stop (not yet agreed with the other ranks)."""
        return self.received is not None
