"""Stand-in ids and sizes that public MANO code hard-codes (mano.md §2.2, §2.4, §3, §4.1)."""

from __future__ import annotations

import numpy as np

WRIST_LOOP: tuple[int, ...] = (
    38, 92, 234, 239, 279, 215, 214, 121, 78, 79, 108, 120, 119, 117, 118, 122,
)
WRIST_CLOSING_FACES: np.ndarray = np.array(
    [[92, 38, 234], [234, 38, 239], [38, 122, 239], [239, 122, 279], [122, 118, 279],
     [279, 118, 215], [118, 117, 215], [215, 117, 214], [117, 119, 214], [214, 119, 121],
     [119, 120, 121], [121, 120, 78], [120, 108, 78], [78, 108, 79]],
    dtype=np.int64,
)
WRIST_CLOSING_FACES.setflags(write=False)
TIPS_MANOPTH = (745, 317, 444, 556, 673)  # thumb, index, middle, ring, pinky
TIPS_FREIHAND = (744, 320, 443, 555, 672)
PALM_CENTRES = (22, 95)  # dorsal, palmar
# The other end-rim neighbour where a convention needs one (smplx 554/671, manopth-left 445).
_TIPS_OTHER = (None, None, 445, 554, 671)

N_VERTS, N_FACES, N_JOINTS = 778, 1538, 16
KINTREE_TABLE = np.array(
    [[4294967295, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14], list(range(N_JOINTS))],
    dtype=np.int64,
)
