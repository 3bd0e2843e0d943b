"""One root seed per run: every random stream of a stage is derived from it here.

A sweep over ``seed`` must change *everything* random about a run (initial weights, data order,
pair and augmentation draws, the monitor's frame set), not only some of it. So sub-configs carry
``seed: null`` by default and :func:`derive_seed` fills them from the run's root seed, per named
stream; a sub-config seed set explicitly in YAML or on the command line is kept as it is (to hold
one stream fixed while the others vary). The resolved seeds are written to ``config.yaml``.

Streams (names are stable: renaming one changes its draws):

=============  ==========================================================
``pairs``      positive-pair and augmentation draws (contra.pairs)
``monitor``    the pose-retrieval monitor's labelled frames (contra.retrieval)
``data``       supervised crops and colour jitter (contra.data.supervised)
=============  ==========================================================

The root seed itself seeds the initial weights (the same on every rank), the sampler order and
the DataLoader generator; per-rank streams (dropout) use ``seed + rank``.
"""

from __future__ import annotations

import random
import zlib

import numpy as np
import torch


def derive_seed(root: int, stream: str) -> int:
    """A 31-bit seed for ``stream`` that depends only on (root seed, stream name)."""
    ss = np.random.SeedSequence([int(root) % 2**63, zlib.crc32(stream.encode())])
    return int(ss.generate_state(1)[0] & 0x7FFFFFFF)


def resolve(seed: int | None, root: int, stream: str) -> int:
    """An explicit sub-config ``seed`` as given, else the one derived from the root seed."""
    return int(seed) if seed is not None else derive_seed(root, stream)


def seed_everything(seed: int) -> None:
    """Python, numpy (global) and torch RNGs of this process."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
