"""The official FreiHAND evaluation protocol as pure array functions (spec §5.3–5.6).

Arrays in, numbers out, float64 throughout, vectorised over samples. File formats live in
:mod:`contra.evaluation`; this package does no I/O and never prints.

Units: inputs are in **metres**. The array functions return metres (errors) or unitless
fractions (PCK, AUC, F-scores). Only :func:`evaluate_freihand` converts mean and median errors to
**centimetres**, because that is what the official ``scores.txt`` holds.

The numbers agree with the official ``eval.py`` / ``EvalUtil`` to ~1e-15 relative (same
formulas and, for the error statistics, the same reduction orders; the 3x3 SVDs and the order of
a few products differ in the last bits). F-scores are *exact*: a point is matched when its
nearest-neighbour distance, computed as ``sqrt((dx²+dy²)+dz²)`` exactly as scipy's ``cKDTree``
does, is strictly below τ.

Modules, one concept each (import from ``contra.metrics``; the modules are the layout):

* :mod:`~contra.metrics.points`: input coercion and the :class:`PointSets` container;
  coordinates are kept as three separate (S, N) planes so per-axis work is contiguous.
* :mod:`~contra.metrics.procrustes`: the official ``align_w_scale``, batched, including all
  query × candidate pairs (:func:`pairwise_pa_errors`).
* :mod:`~contra.metrics.errors`: per-point errors, mean/median, PCK, AUC (``EvalUtil``).
* :mod:`~contra.metrics.fscore`: exact F-scores via blocked KD-tree searches.
* :mod:`~contra.metrics.protocol`: the full protocol, :func:`evaluate_freihand`.
"""

from __future__ import annotations

import sys
import types

from contra.metrics import fscore
from contra.metrics.errors import (
    PCK_THRESHOLDS,
    ErrorSummary,
    pck_per_point,
    point_errors,
    summarize_errors,
)
from contra.metrics.fscore import F_THRESHOLDS, f_scores
from contra.metrics.points import PointSets, as_point_batch
from contra.metrics.procrustes import (
    NonManoAlign,
    Similarity,
    align_w_scale,
    apply_keypoint_similarity,
    fit_similarity,
    pairwise_pa_errors,
)
from contra.metrics.protocol import (
    MEDIAN_KEYS,
    SCORE_KEYS,
    FreihandReport,
    evaluate_freihand,
    freihand_report,
)

__all__ = [
    "F_THRESHOLDS", "MEDIAN_KEYS", "PCK_THRESHOLDS", "SCORE_KEYS", "ErrorSummary",
    "FreihandReport", "NonManoAlign", "PointSets", "Similarity", "align_w_scale",
    "apply_keypoint_similarity", "as_point_batch", "evaluate_freihand", "f_scores",
    "fit_similarity", "freihand_report", "pairwise_pa_errors", "pck_per_point", "point_errors",
    "summarize_errors",
]  # fmt: skip

#: Module-level tunables that callers (tests) set on this package, and the module that reads
#: each. The package holds a mirror of each value; writes through the package go to both.
_TUNABLES: dict[str, types.ModuleType] = {"_BLOCK_SAMPLES": fscore}
_BLOCK_SAMPLES: int = fscore._BLOCK_SAMPLES  # samples per F-score KD-tree


class _Package(types.ModuleType):
    """``contra.metrics`` with writes to :data:`_TUNABLES` forwarded to their module, so
    ``monkeypatch.setattr(contra.metrics, "_BLOCK_SAMPLES", 5)`` still changes the F-score block
    size, as when the metrics were one module (Python reference: "Customizing module attribute
    access")."""

    def __setattr__(self, name: str, value: object) -> None:
        owner = _TUNABLES.get(name)
        if owner is not None:
            setattr(owner, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
