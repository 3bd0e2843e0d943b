"""contra.outbox against a fake sink: ordering, buffering while the sink fails, retry timing,
flush timeouts, the max_buffer bound, close and giving up (no MLflow, each test ~1 s or less)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from contra.outbox import Outbox, Sink, describe_error


class Down(ConnectionError):
    pass


class Refused(RuntimeError):
    """What a sink treats as fatal at open."""


class FakeSink(Sink[int, str]):
    """Records what it receives, in order; ``down`` makes every call fail; ``fail_next`` fails
    that many calls; ``gate`` (when cleared) holds calls until it is set."""

    def __init__(self, first: tuple[str, ...] = ()) -> None:
        self.first = first
        self.down = False
        self.fail_next = 0
        self.fatal_error: Exception | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.sent: list[str | list[int]] = []  # messages and record batches, in order
        self.attempts: list[tuple[float, str]] = []  # (monotonic time, what)
        self.events: list[tuple] = []
        self.opened = 0
        self.calling = ""  # the call in progress (or the last one)

    def _call(self, what: str) -> None:
        self.calling = what
        self.gate.wait(10)
        self.attempts.append((time.monotonic(), what))
        if self.fatal_error is not None and what == "open":
            raise self.fatal_error
        if self.down:
            raise Down("connection refused")
        if self.fail_next:
            self.fail_next -= 1
            raise Down("flaky")

    def open(self) -> tuple[str, ...]:
        self._call("open")
        self.opened += 1
        return self.first

    def send(self, message: str) -> None:
        self._call(message)
        self.sent.append(message)

    def send_records(self, batch: list[int]) -> None:
        self._call("records")
        self.sent.append(list(batch))

    def size(self, message: str) -> int:
        return 0 if message == "final" else len(message)

    def fatal(self, exc: Exception) -> bool:
        return isinstance(exc, Refused)

    def unreachable(self, exc: Exception, retry_interval_s: float) -> None:
        self.events.append(("unreachable", describe_error(exc), retry_interval_s))

    def buffer_full(self, max_buffer: int) -> None:
        self.events.append(("buffer_full", max_buffer))

    def reconnected(self, sent: int, dropped: int) -> None:
        self.events.append(("reconnected", sent, dropped))

    def gave_up(self, exc: Exception) -> None:
        self.events.append(("gave_up", describe_error(exc)))

    def records(self) -> list[int]:
        return [r for item in self.sent if isinstance(item, list) for r in item]

    def messages(self) -> list[str]:
        return [m for m in self.sent if isinstance(m, str)]

    def kinds(self, name: str) -> list[tuple]:
        return [e for e in self.events if e[0] == name]


@pytest.fixture
def make() -> Iterator[Callable[..., tuple[FakeSink, Outbox[int, str]]]]:
    """An outbox over a fresh fake sink; every outbox is stopped at teardown."""
    made: list[tuple[FakeSink, Outbox[int, str]]] = []

    def build(sink: FakeSink | None = None, **kw: object) -> tuple[FakeSink, Outbox[int, str]]:
        sink = sink or FakeSink()
        args = {"retry_interval_s": 0.2, "max_buffer": 100, "batch_size": 4, **kw}
        box: Outbox[int, str] = Outbox(sink, **args)  # type: ignore[arg-type]
        made.append((sink, box))
        return sink, box

    yield build
    for sink, box in made:
        sink.down, sink.fatal_error = False, None
        sink.gate.set()
        box.close(timeout=2, join_timeout=2)


def _wait(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_order_messages_then_record_batches_then_final(make) -> None:
    sink = FakeSink(first=("opened",))
    sink.gate.clear()  # hold the worker in open() until everything is queued
    sink, box = make(sink, batch_size=4)
    box.put_records(range(10))
    box.put("ab")
    box.put("c")
    box.put_records(range(10, 12))
    assert box.pending() == 10 + 2 + 1 + 2
    sink.gate.set()
    assert box.close("final", timeout=5) == (True, 0)
    assert sink.opened == 1
    assert sink.sent == ["opened", "ab", "c", [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], "final"]
    assert sink.attempts[0][1] == "open"
    assert box.pending() == 0 and sink.events == []


def test_buffers_while_the_sink_is_down_and_delivers_in_order(make) -> None:
    sink = FakeSink()
    sink.down = True
    sink, box = make(sink, retry_interval_s=0.1)
    t0 = time.perf_counter()
    for i in range(50):
        box.put_records([i])
    box.put("msg")
    assert time.perf_counter() - t0 < 0.5  # the caller never waits on the sink
    assert not box.flush(0.3)
    assert box.pending() == 50 + 3 and sink.sent == []
    assert len(sink.kinds("unreachable")) == 1  # warned once, however many retries
    assert len(sink.attempts) >= 2
    sink.down = False
    assert box.flush(5)
    assert sink.messages() == ["msg"] and sink.records() == list(range(50))
    assert box.pending() == 0
    assert sink.kinds("reconnected") == [("reconnected", 53, 0)]
    assert sink.kinds("unreachable")[0][1:] == ("Down: connection refused", 0.1)


def test_a_failed_send_is_retried_without_loss_or_duplicates(make) -> None:
    sink, box = make(retry_interval_s=0.05, batch_size=3)
    assert box.wait_opened(5)
    sink.fail_next = 3
    box.put("x")
    box.put_records(range(7))
    assert box.flush(5)
    assert sink.sent == ["x", [0, 1, 2], [3, 4, 5], [6]]
    assert len(sink.kinds("unreachable")) == 1 and len(sink.kinds("reconnected")) == 1


def test_retries_wait_the_interval_unless_someone_flushes(make) -> None:
    sink = FakeSink()
    sink.down = True
    make(sink, retry_interval_s=0.4)
    time.sleep(1.0)  # open at ~0, retries at ~0.4, ~0.8
    times = [t for t, _ in sink.attempts]
    assert 2 <= len(times) <= 4, times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 0.35 for g in gaps), gaps

    sink2 = FakeSink()
    sink2.down = True
    sink2, slow = make(sink2, retry_interval_s=60.0)
    assert _wait(lambda: len(sink2.attempts) == 1)
    time.sleep(0.3)
    assert len(sink2.attempts) == 1  # the next try is 60 s away
    slow.put_records([1])
    assert not slow.flush(1.5)  # a waiting flush retries at once, then every second
    assert len(sink2.attempts) >= 3, sink2.attempts  # open, at once, a second later
    sink2.down = False
    t0 = time.monotonic()
    assert slow.flush(5)
    assert time.monotonic() - t0 < 2.0
    assert slow.opened and sink2.records() == [1]


def test_flush_times_out_fast_and_is_true_when_nothing_is_queued(make) -> None:
    sink, box = make()
    assert box.flush(5)  # only the open: delivered
    sink.down = True
    box.put_records([1])
    t0 = time.monotonic()
    assert not box.flush(0.3)
    assert 0.25 <= time.monotonic() - t0 < 1.0
    assert box.pending() == 1


def test_oldest_records_dropped_beyond_max_buffer(make) -> None:
    sink = FakeSink()
    sink.down = True  # down from the start: nothing is ever in flight
    sink, box = make(sink, max_buffer=5, retry_interval_s=0.1)
    for i in range(12):
        box.put_records([i])
    box.put("keep")  # messages are never dropped
    assert box.pending() == 5 + 4 and box.dropped == 7
    assert sink.kinds("buffer_full") == [("buffer_full", 5)]  # reported once
    box.put_records([12])
    assert box.dropped == 8 and len(sink.kinds("buffer_full")) == 1
    sink.down = False
    assert box.flush(5)
    assert sink.messages() == ["keep"] and sink.records() == [8, 9, 10, 11, 12]
    assert sink.kinds("reconnected") == [("reconnected", 9, 8)]


def test_close_delivers_final_last_then_ignores_puts(make) -> None:
    sink, box = make()
    box.put_records(range(3))
    assert box.close("final", timeout=5) == (True, 0)
    assert box.closed and sink.sent[-1] == "final" and sink.records() == [0, 1, 2]
    box.put("late")
    box.put_records([99])
    assert box.pending() == 0 and sink.messages() == ["final"]
    assert box.close("again", timeout=1) == (True, 0)  # a second close changes nothing
    assert sink.messages() == ["final"]


def test_close_while_down_returns_in_time_and_counts_the_loss(make) -> None:
    sink = FakeSink()
    sink.down = True
    sink, box = make(sink, retry_interval_s=0.1)
    box.put_records(range(6))
    box.put("ab")
    t0 = time.monotonic()
    delivered, lost = box.close("final", timeout=0.5, join_timeout=1.0)
    assert time.monotonic() - t0 < 2.0
    assert (delivered, lost) == (False, 8)  # the final message carries no records
    assert not box._thread.is_alive()  # the worker stopped
    assert sink.sent == []


def test_the_caller_never_waits_for_a_call_in_progress(make) -> None:
    sink, box = make(max_buffer=2000)
    assert box.wait_opened(5)
    sink.gate.clear()  # the sink hangs on the next call
    box.put("stuck")
    assert _wait(lambda: sink.calling == "stuck")  # in flight, held by the sink
    assert box.pending() == 5
    t0 = time.perf_counter()
    for i in range(1000):
        box.put_records([i])
    assert time.perf_counter() - t0 < 0.5
    assert box.pending() == 5 + 1000
    sink.gate.set()
    assert box.flush(5) and sink.records() == list(range(1000))


def test_a_fatal_open_error_gives_up(make) -> None:
    sink = FakeSink()
    sink.fatal_error = Refused("no such experiment")
    sink, box = make(sink)
    assert _wait(lambda: box.closed)
    assert sink.kinds("gave_up") == [("gave_up", "Refused: no such experiment")]
    assert not box.opened and not box.wait_opened(0.05)
    box.put("ignored")
    assert box.pending() == 0 and box.flush(1)
    assert [what for _, what in sink.attempts] == ["open"]  # not retried


def test_a_failing_open_is_retried_until_it_succeeds(make) -> None:
    sink = FakeSink(first=("hello",))
    sink.fail_next = 2
    sink, box = make(sink, retry_interval_s=0.05)
    box.put("m")
    assert box.wait_opened(5) and box.flush(5)
    assert [what for _, what in sink.attempts][:3] == ["open", "open", "open"]
    assert sink.sent == ["hello", "m"]


def test_invalid_settings_are_refused() -> None:
    for kw in ({"max_buffer": 0}, {"retry_interval_s": 0}, {"batch_size": 0}):
        args = {"retry_interval_s": 1.0, "max_buffer": 1, "batch_size": 1, **kw}
        with pytest.raises(ValueError, match="positive"):
            Outbox(FakeSink(), **args)  # type: ignore[arg-type]


def test_describe_error_names_the_innermost_cause() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as inner:
            raise RuntimeError("request failed\nmore") from inner
    except RuntimeError as exc:
        assert describe_error(exc) == "ConnectionRefusedError: [Errno 111] Connection refused"
    assert describe_error(ValueError()) == "ValueError"
