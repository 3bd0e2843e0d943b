"""Loop helpers every training stage uses: exact mid-epoch resume, step agreement, timing, bar.

Exact resume rests on two facts: the sampler's order is a pure function of (seed, epoch), and the
DataLoader draws from its own generator, never the global RNG. So skipping the consumed part of
an epoch (:class:`SkipSampler`) puts a resumed run on the very batches an uninterrupted one sees.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


class SkipSampler(Sampler[int]):
    """The epoch's indices of a sampler without its first ``skip`` (the mid-epoch resume)."""

    def __init__(self, sampler: Sampler[int], skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        it = iter(self.sampler)
        for _ in range(self.skip):
            next(it)
        yield from it

    def __len__(self) -> int:
        return len(self.sampler) - self.skip  # type: ignore[arg-type]


def epoch_loader(dataset: Dataset, sampler: DistributedSampler, batch: int, epoch: int,
                 skip_batches: int, seed: int, workers: int, pin: bool,
                 collate_fn: Callable[[list], Any] | None = None) -> DataLoader:
    """The epoch's DataLoader from ``skip_batches`` on; its own generator (no global draws)."""
    sampler.set_epoch(epoch)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(dataset, batch_size=batch, sampler=SkipSampler(sampler, skip_batches * batch),
                      num_workers=workers, drop_last=True, pin_memory=pin, generator=gen,
                      persistent_workers=False, collate_fn=collate_fn)


def agree(stop: bool, metrics: Mapping[str, Tensor], world: int,
          counts: Sequence[int] = ()) -> tuple[bool, dict[str, float], list[int]]:
    """One all_reduce per step: the stop flags (sum > 0 = any rank asked), metric means and
    count sums (e.g. the step's loads and skipped loads over all ranks).

    Every rank stops after the same step even when one alone was signalled (moco.md §5.5).
    Counts travel as float32: exact for per-step values below 2**24.
    """
    values = [m.detach().float().reshape(()) for m in metrics.values()]
    device = values[0].device if values else torch.device("cpu")
    t = torch.stack([torch.tensor(float(stop), device=device), *values,
                     *(torch.tensor(float(c), device=device) for c in counts)])
    if world > 1:
        dist.all_reduce(t)
    n = len(values)
    means = (t[1:1 + n] / world).tolist()
    sums = [round(c) for c in t[1 + n:].tolist()]
    return bool(t[0].item() > 0), dict(zip(metrics, means, strict=True)), sums


class StepTimer:
    """Time waiting for data versus computing, over the steps of one epoch."""

    def __init__(self) -> None:
        self.wait = self.busy = 0.0
        self.steps = 0
        self._t = time.perf_counter()

    def loaded(self) -> None:
        """The batch arrived: the time since the last step was spent waiting for data."""
        now = time.perf_counter()
        self.wait, self._t = self.wait + (now - self._t), now

    def stepped(self) -> None:
        now = time.perf_counter()
        self.busy, self._t, self.steps = self.busy + (now - self._t), now, self.steps + 1

    @property
    def steps_per_s(self) -> float:
        return self.steps / max(self.wait + self.busy, 1e-9)

    @property
    def data_wait(self) -> float:
        """Fraction of the epoch's time spent waiting for data (0..1)."""
        return self.wait / max(self.wait + self.busy, 1e-9)


def progress_bar(total: int, initial: int, enabled: bool, desc: str) -> Any:
    """The rank-0 tqdm bar on stderr (disabled elsewhere)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=min(initial, total), disable=not enabled, desc=desc,
                unit="step", dynamic_ncols=True, file=sys.stderr)
