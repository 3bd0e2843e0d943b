"""Bounded, counted retries of dataset items whose image files are missing or corrupt.

Shared by :class:`contra.pairs.PairDataset` and :class:`contra.data.supervised.SupervisedDataset`
(``hanco-freihand.md`` §7 item 17: the official loader retries forever). An item is tried at most
``1 + max_retries`` times, each attempt with a fresh draw (the caller decides what that is).
Every attempt is a *load*; a failed one is a *skipped load*.

Counting happens where a user can see it. Each dataset object (so each DataLoader worker) counts
its loads; :class:`CountingCollate` hands the loads of each batch to the main process with the
batch itself (the worker collates right after loading the batch's items, so the counts are those
of exactly that batch, deterministic, whatever the number of workers); the training scaffold sums
them over ranks every step (:mod:`contra.run`) and checks the skipped fraction there, the same
decision on every rank, so a run that must stop stops everywhere after the same step with one
error. Used outside the scaffold (a plain DataLoader), a dataset checks its own fraction. Above
``max_failure_fraction`` (after ``min_attempts``) a :class:`DataFormatError` names example files
and the config key that would let the run go on, because a dataset that is mostly missing should
fail loudly, not train on whatever is left.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

from torch.utils.data import default_collate

from contra.data.errors import DataFormatError

T = TypeVar("T")

#: What decoding a missing, truncated or foreign file raises (PIL, torchvision, our readers).
LOAD_ERRORS = (OSError, RuntimeError, ValueError, SyntaxError)
MAX_EXAMPLES = 5


class ImageError(Exception):
    """An image file is missing or cannot be decoded: the one failure an attempt may retry."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        super().__init__(f"{path}: {reason(cause)}")
        self.path = path


def reason(cause: BaseException) -> str:
    """Why a file failed, short: "missing", or the error without the object reprs PIL adds."""
    if isinstance(cause, FileNotFoundError):
        return "missing"
    text = re.sub(r" <[^<>]* at 0x[0-9a-f]+>", "", str(cause))
    return f"{type(cause).__name__}: {text}"


class RetrySettings(Protocol):
    """The config fields the policy reads (both datasets' configs have them)."""

    @property
    def max_retries(self) -> int: ...
    @property
    def max_failure_fraction(self) -> float: ...
    @property
    def min_attempts(self) -> int: ...
    @property
    def warn_interval_s(self) -> float: ...


@dataclass
class LoadTally:
    """Loads and skipped loads, with the first few skipped files: of one process, or a run's."""

    attempts: int = 0
    failures: int = 0
    examples: list[str] = field(default_factory=list)  # failing files (paths)

    @property
    def failure_fraction(self) -> float:
        return self.failures / self.attempts if self.attempts else 0.0

    def add(self, attempts: int, failures: int, examples: Sequence[str] = ()) -> None:
        self.attempts += int(attempts)
        self.failures += int(failures)
        for e in examples:
            if len(self.examples) < MAX_EXAMPLES and e not in self.examples:
                self.examples.append(e)

    def summary(self, noun: str = "loads") -> str:
        """``skipped N of M loads (x %), e.g. FILE`` (the closing line of a run)."""
        eg = f", e.g. {self.examples[0]}" if self.examples else ""
        return (f"skipped {self.failures:,} of {self.attempts:,} {noun} "
                f"({100 * self.failure_fraction:.1f} %){eg}")

    def to_dict(self) -> dict[str, Any]:
        return {"loads": self.attempts, "skipped_loads": self.failures,
                "skipped_pct": round(100 * self.failure_fraction, 3),
                "examples": list(self.examples)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoadTally:
        return cls(int(d.get("loads", 0)), int(d.get("skipped_loads", 0)),
                   [str(e) for e in d.get("examples", [])][:MAX_EXAMPLES])


@dataclass
class LoadStats(LoadTally):
    """Per-dataset (so per worker process) counters; also what the next batch has not yet
    reported (:class:`CountingCollate`) and the warning rate limit."""

    last_warning: float = float("-inf")
    suppressed: int = 0
    reported: tuple[int, int] = (0, 0)  # attempts, failures already handed on with a batch
    pending: list[str] = field(default_factory=list)  # failing files since the last batch


def check_fraction(tally: LoadTally, settings: RetrySettings, *, source: Path | str, noun: str,
                   key: str) -> None:
    """Raise the one-line :class:`DataFormatError` once too large a fraction of loads failed."""
    if tally.attempts < settings.min_attempts \
            or tally.failure_fraction <= settings.max_failure_fraction:
        return
    eg = "; ".join(tally.examples[:3]) or "(the failing files are named in the warnings)"
    enough = min(1.0, 2 * tally.failure_fraction)
    raise DataFormatError(
        f"{source}: {tally.failures} of {tally.attempts} {noun} hit missing or corrupt images "
        f"({tally.failure_fraction:.1%} > {key}.max_failure_fraction "
        f"{settings.max_failure_fraction:.1%}), e.g. {eg}; `contra data check --deep {source}` "
        f"lists every damaged file, {key}.max_failure_fraction={enough:.2g} trains on the rest")


class RetryPolicy:
    """Runs an item's attempts under the bounded, counted, rate-limited retry rule.

    ``source`` names the dataset in errors (its root), ``label`` starts each warning ("HanCo
    pairs"), ``noun`` counts the loads ("pair loads"), ``key`` is the config section of the
    settings ("pairs"), so the error names the key that lets a run continue; ``logger`` is the
    dataset module's, so warnings keep their origin. ``deferred``: the fraction is checked by the
    caller over all workers and ranks (the training scaffold sets it), not per process.
    """

    def __init__(self, settings: RetrySettings, *, source: Path | str, label: str, noun: str,
                 logger: logging.Logger, key: str) -> None:
        self.settings = settings
        self.source, self.label, self.noun, self.key, self.log = source, label, noun, key, logger
        self.stats = LoadStats()
        self.deferred = False

    def run(self, idx: int, attempt: Callable[[int], T]) -> T:
        """``attempt(k)`` for k = 0, 1, … until one returns; only :class:`ImageError` retries."""
        errors: list[str] = []
        for k in range(self.settings.max_retries + 1):
            self.stats.attempts += 1
            try:
                return attempt(k)
            except ImageError as e:
                error = e
            errors.append(str(error))
            self.failed(error)  # raises once the failure fraction is too high
        raise DataFormatError(
            f"{self.source}: item {idx}: all {len(errors)} attempts hit missing or corrupt "
            f"images, e.g. {'; '.join(dict.fromkeys(errors[:3]))}; "
            f"`contra data check --deep {self.source}` lists every damaged file")

    def failed(self, error: ImageError) -> None:
        """Count one failed attempt, warn (rate-limited), raise above the failure fraction."""
        st, cfg = self.stats, self.settings
        st.failures += 1
        path = str(error.path)
        st.add(0, 0, [path])
        if len(st.pending) < MAX_EXAMPLES:
            st.pending.append(path)
        now = time.monotonic()
        if now - st.last_warning >= cfg.warn_interval_s:
            extra = f" ({st.suppressed} more since the last warning)" if st.suppressed else ""
            self.log.warning("%s: %s; retrying with another draw%s", self.label, error, extra)
            st.last_warning, st.suppressed = now, 0
        else:
            st.suppressed += 1
        if not self.deferred:
            check_fraction(st, cfg, source=self.source, noun=self.noun, key=self.key)

    def take_unreported(self) -> tuple[int, int, list[str]]:
        """(attempts, failures, failing files) since the last call: one batch's loads."""
        st = self.stats
        attempts, failures = st.attempts - st.reported[0], st.failures - st.reported[1]
        st.reported, pending, st.pending = (st.attempts, st.failures), st.pending, []
        return attempts, failures, pending


class CountedBatch(NamedTuple):
    """A collated batch with the loads its items took (what the DataLoader yields)."""

    batch: Any
    attempts: int
    failures: int
    failed: list[str]


class CountingCollate:
    """``collate_fn`` that attaches each batch's load counts (runs in the worker process).

    Made in the main process when a loader is (it forgets the loads made outside that loader's
    batches, e.g. a monitor's); pickled to the workers with the dataset in one process object, so
    ``policy`` is the worker's own copy of the dataset's policy.
    """

    def __init__(self, policy: RetryPolicy, collate: Callable[[list], Any] = default_collate):
        self.policy, self.collate = policy, collate
        policy.take_unreported()

    def __call__(self, samples: list) -> CountedBatch:
        return CountedBatch(self.collate(samples), *self.policy.take_unreported())
