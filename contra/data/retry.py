"""Bounded, counted retries of dataset items whose image files are missing or corrupt.

Shared by :class:`contra.pairs.PairDataset` and :class:`contra.data.supervised.SupervisedDataset`
(``hanco-freihand.md`` §7 item 17: the official loader retries forever). An item is tried at most
``1 + max_retries`` times, each attempt with a fresh draw (the caller decides what that is);
attempts and failures are counted per dataset object, so per DataLoader worker process; failures
are logged at most every ``warn_interval_s`` seconds; and once ``min_attempts`` were made, a
failure fraction above ``max_failure_fraction`` stops the run with a :class:`DataFormatError`
naming example files, because a dataset that is mostly missing should fail loudly, not train on
whatever is left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from contra.data.errors import DataFormatError

T = TypeVar("T")

#: What decoding a missing, truncated or foreign file raises (PIL, torchvision, our readers).
LOAD_ERRORS = (OSError, RuntimeError, ValueError, SyntaxError)


class ImageError(Exception):
    """An image file is missing or cannot be decoded: the one failure an attempt may retry."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        super().__init__(f"{path}: {type(cause).__name__}: {cause}")
        self.path = path


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
class LoadStats:
    """Per-dataset (so per worker process) counters of item load attempts and failures."""

    attempts: int = 0
    failures: int = 0
    examples: list[str] = field(default_factory=list)  # first few failing files, with reasons
    last_warning: float = float("-inf")
    suppressed: int = 0

    @property
    def failure_fraction(self) -> float:
        return self.failures / self.attempts if self.attempts else 0.0


class RetryPolicy:
    """Runs an item's attempts under the bounded, counted, rate-limited retry rule.

    ``source`` names the dataset in the fraction error (its root), ``label`` starts each warning
    ("HanCo pairs"), ``noun`` counts the loads in the fraction error ("pair loads"); ``logger``
    is the dataset module's, so warnings keep their origin.
    """

    def __init__(self, settings: RetrySettings, *, source: Path | str, label: str, noun: str,
                 logger: logging.Logger) -> None:
        self.settings = settings
        self.source, self.label, self.noun, self.log = source, label, noun, logger
        self.stats = LoadStats()

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
            f"item {idx}: all {len(errors)} attempts hit missing or corrupt images, e.g. "
            f"{'; '.join(errors[:3])}")

    def failed(self, error: ImageError) -> None:
        """Count one failed attempt, warn (rate-limited), raise above the failure fraction."""
        st, cfg = self.stats, self.settings
        st.failures += 1
        if len(st.examples) < 5:
            st.examples.append(str(error))
        now = time.monotonic()
        if now - st.last_warning >= cfg.warn_interval_s:
            extra = f" ({st.suppressed} more since the last warning)" if st.suppressed else ""
            self.log.warning("%s: %s; retrying with another draw%s [%d/%d attempts failed]",
                             self.label, error, extra, st.failures, st.attempts)
            st.last_warning, st.suppressed = now, 0
        else:
            st.suppressed += 1
        if st.attempts >= cfg.min_attempts and st.failure_fraction > cfg.max_failure_fraction:
            raise DataFormatError(
                f"{self.source}: {st.failures} of {st.attempts} {self.noun} hit missing or "
                f"corrupt images ({st.failure_fraction:.1%} > max_failure_fraction "
                f"{cfg.max_failure_fraction:.1%}), e.g. {'; '.join(st.examples)}")
