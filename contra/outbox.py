"""A buffered, retrying sender that the thread feeding it never waits on.

The caller only appends to in-memory queues (O(1), no I/O); one daemon thread does all the I/O
against a :class:`Sink`. When the sink fails, the item stays queued, in order, and is retried
every ``retry_interval_s`` (every second at most while someone waits in :meth:`Outbox.flush`);
meanwhile the caller keeps appending. The buffer is bounded: beyond ``max_buffer`` records the
oldest records are dropped and counted.

Two kinds of items, sent in this order whenever both are queued:

- *messages* (:meth:`Outbox.put`): never dropped, sent one at a time;
- *records* (:meth:`Outbox.put_records`): many small ones (metrics), sent ``batch_size`` at a
  time; these are what ``max_buffer`` bounds.

The sink is opened once before anything is sent (retried like any other call), and the optional
final message of :meth:`Outbox.close` goes out after everything else. The outbox knows nothing of
what the sink talks to; the sink also reports, in its own words, the outbox's state changes
(unreachable, buffer full, reconnected, given up).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

R = TypeVar("R")  # a record
M = TypeVar("M")  # a message


def describe_error(exc: BaseException) -> str:
    """The innermost cause, one line: ``ConnectionRefusedError: [Errno 111] Connection refused``."""
    seen = {id(exc)}
    while (nxt := exc.__cause__ or exc.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        exc = nxt
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


class Sink(Generic[R, M]):
    """The far end of an :class:`Outbox`.

    The I/O methods (:meth:`open`, :meth:`send`, :meth:`send_records`) run on the outbox's thread
    only, one at a time; they raise on failure and the outbox retries the same item later. The
    hooks are called with the outbox's lock held (:meth:`buffer_full` on the caller's thread), so
    they must not call the outbox; by default they log to ``contra.outbox``.
    """

    def open(self) -> Sequence[M]:
        """Connect; called (and retried) until it returns, before anything is sent.

        The messages it returns are sent before every message already queued."""
        return ()

    def send(self, message: M) -> None:
        raise NotImplementedError

    def send_records(self, batch: list[R]) -> None:
        raise NotImplementedError

    def size(self, message: M) -> int:
        """How many user records ``message`` carries (for :meth:`Outbox.pending`)."""
        return 1

    def fatal(self, exc: Exception) -> bool:
        """Whether a failed :meth:`open` can never succeed: the outbox then gives up."""
        return False

    # ------------------------------------------------------------------ hooks
    def unreachable(self, exc: Exception, retry_interval_s: float) -> None:
        """The first failure after a success (or at the start)."""
        log.warning("outbox: sink unreachable (%s); buffering, retried every %g s",
                    describe_error(exc), retry_interval_s)

    def buffer_full(self, max_buffer: int) -> None:
        """The first time records are dropped."""
        log.warning("outbox: buffer full (max_buffer=%d records); dropping the oldest",
                    max_buffer)

    def reconnected(self, sent: int, dropped: int) -> None:
        """Everything queued is delivered again after a failure; ``sent`` since then."""
        log.info("outbox: reconnected, flushed %d records (%d dropped in total)", sent, dropped)

    def gave_up(self, exc: Exception) -> None:
        """:meth:`open` failed with a :meth:`fatal` error; nothing more is sent."""
        log.error("outbox: cannot open the sink (%s); giving up", describe_error(exc))


class Outbox(Generic[R, M]):
    """Queues for one :class:`Sink` and the thread that drains them; see the module docstring.

    ``put``/``put_records`` never block on I/O and are ignored once the outbox is closed (by
    :meth:`close`, or because the sink could not be opened).
    """

    def __init__(self, sink: Sink[R, M], *, retry_interval_s: float, max_buffer: int,
                 batch_size: int = 1000, name: str = "outbox") -> None:
        if max_buffer < 1 or retry_interval_s <= 0 or batch_size < 1:
            raise ValueError("outbox: max_buffer, retry_interval_s and batch_size must be positive")
        self._sink = sink
        self.retry_interval_s = retry_interval_s
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self._cv = threading.Condition()
        self._records: collections.deque[R] = collections.deque()
        self._messages: collections.deque[M] = collections.deque()
        self._final: M | None = None  # sent after everything else (close)
        self._opened = threading.Event()
        self._closed = False
        self._inflight = 0  # records taken by the worker and not yet confirmed
        self._busy = False  # the worker holds an item taken from the queues
        self._stop = False
        self._next_try = 0.0  # monotonic time of the next attempt after a failure
        self._flushing = 0  # callers waiting in flush(): retry a failing sink every second
        self._down = False  # between a failed attempt and the next success
        self._flushed: int | None = None  # records sent since reconnecting, until drained
        self._dropped = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ any thread
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def opened(self) -> bool:
        """Whether :meth:`Sink.open` has succeeded."""
        return self._opened.is_set()

    @property
    def dropped(self) -> int:
        """Records dropped so far because the buffer was full."""
        return self._dropped

    def wait_opened(self, timeout: float | None = None) -> bool:
        return self._opened.wait(timeout)

    def put(self, message: M) -> None:
        if self._closed:
            return
        with self._cv:
            self._messages.append(message)
            self._cv.notify()

    def put_records(self, records: Iterable[R]) -> None:
        if self._closed:
            return
        with self._cv:
            self._records.extend(records)
            self._trim()
            self._cv.notify()

    def pending(self) -> int:
        """Records not yet delivered (queued or in flight)."""
        with self._cv:
            return self._pending()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is delivered (True) or ``timeout`` s pass.

        Meanwhile a failing sink is retried every second (at most ``retry_interval_s``) rather
        than every ``retry_interval_s``. ``timeout=None`` waits without limit.
        """
        with self._cv:
            if not self._thread.is_alive():
                return self._delivered()
            self._next_try = 0.0
            self._flushing += 1
            self._cv.notify_all()
            try:
                self._cv.wait_for(lambda: self._delivered() or self._stop, timeout)
            finally:
                self._flushing -= 1
            return self._delivered()

    def close(self, final: M | None = None, timeout: float | None = 30.0,
              join_timeout: float | None = None) -> tuple[bool, int]:
        """Queue ``final`` last, flush (up to ``timeout`` s) and stop the thread (waiting up to
        ``join_timeout`` s for a call in progress); (everything delivered, records lost)."""
        if self._closed:
            with self._cv:
                return self._delivered(), self._pending()
        with self._cv:
            self._final = final
            self._closed = True
            self._cv.notify()
        delivered = self.flush(timeout)
        with self._cv:
            lost = self._pending()
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout=join_timeout)
        return delivered, lost

    # ------------------------------------------------------------------ lock held
    def _trim(self) -> None:
        """Drop the oldest records beyond ``max_buffer`` of them."""
        excess = len(self._records) - self.max_buffer
        if excess <= 0:
            return
        for _ in range(excess):
            self._records.popleft()
        if not self._dropped:
            self._sink.buffer_full(self.max_buffer)
        self._dropped += excess

    def _pending(self) -> int:
        final = self._sink.size(self._final) if self._final is not None else 0
        return (len(self._records) + sum(self._sink.size(m) for m in self._messages)
                + final + self._inflight)

    def _delivered(self) -> bool:
        return (not self._records and not self._messages and self._final is None
                and not self._busy)

    # ------------------------------------------------------------------ worker thread
    def _loop(self) -> None:
        while self._wait_for_work():
            try:
                sent = self._step()
            except Exception as exc:
                if not self._opened.is_set() and self._sink.fatal(exc):
                    self._give_up(exc)
                    return
                self._on_failure(exc)
            else:
                self._on_success(sent)

    def _give_up(self, exc: Exception) -> None:
        self._sink.gave_up(exc)
        with self._cv:
            self._stop = self._closed = True
            self._cv.notify_all()

    def _wait_for_work(self) -> bool:
        """Sleep until there is something to do and no back-off is pending; False: stop."""
        with self._cv:
            while not self._stop:
                has_work = not self._delivered() or not self._opened.is_set()
                wait = self._next_try - time.monotonic()
                if has_work and wait <= 0:
                    return True
                self._cv.wait(wait if has_work else None)
            return False

    def _step(self) -> int:
        """One unit of I/O: open the sink, or send one message or one batch of records."""
        if not self._opened.is_set():
            first = list(self._sink.open())
            with self._cv:
                self._messages.extendleft(reversed(first))
                self._opened.set()
            return 0
        message: M | None = None
        batch: list[R] = []
        final = False
        with self._cv:  # messages, then records, then the final message
            if self._messages:
                message = self._messages.popleft()
            elif self._records:
                batch = [self._records.popleft()
                         for _ in range(min(len(self._records), self.batch_size))]
            else:
                message, self._final, final = self._final, None, True
            sent = self._sink.size(message) if message is not None else len(batch)
            self._inflight, self._busy = sent, True
        try:
            if message is not None:
                self._sink.send(message)
            elif batch:
                self._sink.send_records(batch)
        except Exception:
            with self._cv:  # put it back, in order, for the next attempt
                if final:
                    self._final = message
                elif message is not None:
                    self._messages.appendleft(message)
                else:
                    self._records.extendleft(reversed(batch))
                    self._trim()
                self._inflight, self._busy = 0, False
            raise
        return sent

    def _on_success(self, sent: int) -> None:
        with self._cv:
            self._inflight, self._busy = 0, False
            if self._down:
                self._down, self._flushed = False, 0
            if self._flushed is not None:
                self._flushed += sent
                if self._delivered():
                    self._sink.reconnected(self._flushed, self._dropped)
                    self._flushed = None
            self._cv.notify_all()

    def _on_failure(self, exc: Exception) -> None:
        with self._cv:
            if not self._down:
                self._sink.unreachable(exc, self.retry_interval_s)
            self._down = True
            interval = self.retry_interval_s
            self._next_try = time.monotonic() + (min(interval, 1.0) if self._flushing else interval)
            self._cv.notify_all()
