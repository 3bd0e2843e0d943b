"""A run's skipped loads: the training set's missing or corrupt images, counted over all ranks.

The dataset counts each batch's loads in the worker that loaded it
(:class:`~contra.data.retry.CountingCollate`); the run adds them up over ranks in the step's
all-reduce (:func:`contra.loop.agree`), so every rank holds the same totals and the
``max_failure_fraction`` check stops every rank after the same step with the same one-line
error. The totals survive resumes (they are in the checkpoint) and reach the user on the bar,
as ``data/*`` metrics, in ``run.json`` and in a closing line.
"""

from __future__ import annotations

import logging
from typing import Any

import torch.distributed as dist
from torch.utils.data import Dataset

from contra.data.errors import DataFormatError
from contra.data.retry import CountedBatch, CountingCollate, LoadTally, RetryPolicy, check_fraction

log = logging.getLogger(__name__)


class RunLoads:
    """The skip accounting of one rank's run (inactive for a dataset without a retry policy)."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.policy: RetryPolicy | None = None
        self.tally = LoadTally()

    def attach(self, dataset: Dataset) -> None:
        """Take over ``dataset``'s fraction check (before anything loads from it)."""
        policy = getattr(dataset, "retry", None)
        if isinstance(policy, RetryPolicy):
            policy.deferred, self.policy = True, policy

    def collate(self) -> CountingCollate | None:
        """The epoch loader's ``collate_fn``; forgets loads made outside the run's batches."""
        return None if self.policy is None else CountingCollate(self.policy)

    def unpack(self, loaded: Any) -> tuple[Any, tuple[int, ...]]:
        """The stage's batch and this rank's (loads, skipped loads) of it, for the all-reduce."""
        if self.policy is None:
            return loaded, ()
        counted = CountedBatch(*loaded)
        self.tally.add(0, 0, counted.failed)
        return counted.batch, (counted.attempts, counted.failures)

    def add(self, sums: list[int]) -> None:
        """The step's loads and skipped loads summed over ranks."""
        if sums:
            self.tally.add(*sums)

    def check(self) -> None:
        """Raise the one-line error above the fraction (with every rank's example files)."""
        if self.policy is None:
            return
        p = self.policy
        try:
            check_fraction(self.tally, p.settings, source=p.source, noun=p.noun, key=p.key)
        except DataFormatError:
            self.gather_examples()  # every rank is here: the totals are the same everywhere
            check_fraction(self.tally, p.settings, source=p.source, noun=p.noun, key=p.key)

    def gather_examples(self) -> None:
        """Every rank's first skipped files (a collective when there are several ranks)."""
        if self.world == 1:
            return
        lists: list[Any] = [None] * self.world
        dist.all_gather_object(lists, self.tally.examples)
        merged = LoadTally()
        for examples in lists:
            merged.add(0, 0, examples)
        self.tally.examples = merged.examples

    def metrics(self) -> dict[str, float]:
        if self.policy is None:
            return {}
        t = self.tally
        return {"data/loads": t.attempts, "data/skipped_loads": t.failures,
                "data/skipped_loads_pct": 100 * t.failure_fraction}

    def postfix(self) -> dict[str, str]:
        t = self.tally
        return {"skipped": f"{t.failures}/{t.attempts}"} if t.failures else {}

    def summary(self) -> dict[str, Any]:
        """``run.json``'s ``data`` entry; the closing line goes to the log (rank 0 calls it)."""
        if self.policy is None:
            return {}
        noun, t = self.policy.noun, self.tally
        if t.failures:
            log.warning("%s; `contra data check --deep %s` lists every damaged file",
                        t.summary(noun), self.policy.source)
        else:
            log.info("no %s skipped (%d loads)", noun, t.attempts)
        return {"data": {"source": str(self.policy.source), "what": noun, **t.to_dict()}}

    def state_dict(self) -> dict[str, Any]:
        return self.tally.to_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tally = LoadTally.from_dict(state)
