"""The exported weights of a pretraining run: torchvision and contra-hand layouts plus a model card.

What downstream code loads is the query encoder, in two layouts (:data:`contra.nets.EXPORTS`),
listed in ``weights.txt`` by paths relative to the run directory (so the listing survives moving
the folder), and ``model.json`` saying what the weights are: arch, stem, head BN, and whether
torchvision's ResNet can load the backbone (not with the small stem).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from contra.atomic import write_text_atomic
from contra.checkpoint import save_checkpoint
from contra.nets import EXPORTS

log = logging.getLogger(__name__)

FILES = {"torchvision": "backbone_torchvision.pth", "contra-hand": "embed_contra_hand.pth"}


def export_encoder(state_dict: Mapping[str, Tensor], model: Any, out: Path,
                   run_root: Path) -> list[Path]:
    """Write both layouts, ``weights.txt`` and ``model.json`` under ``out``; the two listings.

    ``model`` is the pretraining ``ModelConfig`` (arch, dim, stem, dilate_last, head_bn).
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = [save_checkpoint(EXPORTS[fmt](state_dict), out / name) for fmt, name in FILES.items()]
    listing = write_text_atomic(out / "weights.txt", "".join(
        f"{p.resolve().relative_to(run_root.resolve())}\n" for p in paths))
    log.info("exported the query encoder to %s", out)
    return [listing, model_card(model, out / "model.json")]


def model_card(model: Any, path: Path) -> Path:
    """What the exported weights are: arch, stem, and whether torchvision can load them."""
    notes = []
    if model.stem != "imagenet":
        notes.append("non-standard small stem (conv1 3x3 stride 1, no max-pool): load with "
                     "contra.nets and model.stem=small, not into torchvision's resnet")
    if model.head_bn:
        notes.append("head_bn: the embed export keeps fc/fc2 only (contra-hand's layout), "
                     "not the head's BatchNorms; the backbone is complete")
    return write_text_atomic(path, json.dumps({
        "arch": model.arch, "dim": model.dim, "stem": model.stem,
        "dilate_last": model.dilate_last, "head_bn": model.head_bn,
        "standard_torchvision": model.stem == "imagenet", "notes": notes}, indent=1))
