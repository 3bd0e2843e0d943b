"""MANO hand model: safe loading, the manopth-compatible layer, FreiHAND's 61-d vector, stand-in."""

from contra.mano.io import ManoFileError, ManoModel, load_mano
from contra.mano.layer import KEYPOINT_ORDER, TIPS, ManoLayer, ManoOutput, default_mano_root

__all__ = [
    "KEYPOINT_ORDER",
    "TIPS",
    "ManoFileError",
    "ManoLayer",
    "ManoModel",
    "ManoOutput",
    "default_mano_root",
    "load_mano",
]
