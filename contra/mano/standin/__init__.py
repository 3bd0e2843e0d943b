"""Procedural stand-in for the licensed MANO hand model (recipe: spec/mano.md §4).

``MANO_RIGHT.pkl`` cannot be shipped, yet the loader, the layer, the demo and CI all need a model
with MANO's exact keys, dtypes, shapes and topology.  This module builds one deterministically:

* **topology**: a "pillow" over a 2-D quad chart (palm, four fingers, thumb), top sheet dorsal (+y),
  bottom sheet palmar (-y), glued along the chart outline except for a 16-edge wrist opening, plus
  five split cells -> exactly 778 vertices and 1538 faces, a disk like MANO;
* **ids**: vertices are permuted so that the ids public code hard-codes (fingertips, palm centres,
  the wrist loop that the 14-face closing strip seals) land on the matching places;
* **geometry**: a flat right hand in MANO's frame (metres, fingers toward -x, index +z, pinky -z,
  thickness along y, wrist joint at (0.10, 0, 0));
* **arrays**: regressor, skinning weights, shape/pose blend shapes and a pose PCA with MANO's
  semantics (component 0 curls every joint toward the palm).

``write_standin`` writes the plain pickle manopth reads, its mirrored left hand, and a chumpy-layout
copy (``shapedirs`` as ``chumpy.reordering.Select`` over ``chumpy.ch.Ch``) written without chumpy.

Layout (one concept per module): ``ids`` (the public ids and sizes), ``design`` (the numbers and
the five digits), ``topology`` (pillow mesh, id relabelling), ``geometry`` (template vertices),
``skinning`` (regressor, weights), ``blendshapes`` (seeded shape/pose blend shapes, pose PCA),
``build`` (right and left model dicts), ``writing`` (the pickles).
"""

from contra.mano.standin.build import build_standin, mirror_to_left
from contra.mano.standin.design import WRIST
from contra.mano.standin.ids import (
    KINTREE_TABLE,
    N_FACES,
    N_JOINTS,
    N_VERTS,
    PALM_CENTRES,
    TIPS_FREIHAND,
    TIPS_MANOPTH,
    WRIST_CLOSING_FACES,
    WRIST_LOOP,
)
from contra.mano.standin.writing import write_standin

__all__ = [
    "KINTREE_TABLE",
    "N_FACES",
    "N_JOINTS",
    "N_VERTS",
    "PALM_CENTRES",
    "TIPS_FREIHAND",
    "TIPS_MANOPTH",
    "WRIST",
    "WRIST_CLOSING_FACES",
    "WRIST_LOOP",
    "build_standin",
    "mirror_to_left",
    "write_standin",
]
