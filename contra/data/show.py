"""Visual sanity check of one HanCo image: projected keypoints, skeleton and hand-mask outline.

If the calibration convention were wrong (M camera→world instead of world→camera, K transposed),
the skeleton would visibly miss the hand, which is what this picture is for (spec §7 item 15).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import binary_erosion

from contra.data import hanco as hc

log = logging.getLogger(__name__)

# FreiHAND keypoint order: 0 wrist, then thumb, index, middle, ring, pinky (base → tip).
BONES = tuple(pair for f in range(5)
              for pair in ((0, 1 + 4 * f), (1 + 4 * f, 2 + 4 * f), (2 + 4 * f, 3 + 4 * f),
                           (3 + 4 * f, 4 + 4 * f)))
FINGER_COLOURS = ((255, 0, 0), (255, 160, 0), (0, 200, 0), (0, 90, 255), (200, 0, 255))
WRIST_COLOUR = (255, 255, 255)
OUTLINE_COLOUR = (0, 255, 255)
MASK_THRESHOLD = 128  # the masks are JPEGs: threshold before use (spec §7 item 16)


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels (bool, H×W) of the thresholded 8-bit mask."""
    m = mask >= MASK_THRESHOLD
    return m & ~binary_erosion(m)


def keypoints_uv(root: Path, sid: int, cid: int, fid: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions (21, 2) of the keypoints in camera ``cid`` and their depths (21,)."""
    K, M = hc.read_calib(hc.calib_path(root, sid, fid))
    cam = hc.world_to_camera(hc.read_xyz(hc.xyz_path(root, sid, fid)), M[cid])
    return hc.project_points(cam, K[cid]), cam[:, 2]


def _keypoint_colour(k: int) -> tuple[int, int, int]:
    return WRIST_COLOUR if k == 0 else FINGER_COLOURS[(k - 1) // 4]


def _draw_skeleton(image: Image.Image, uv: np.ndarray, visible: np.ndarray) -> None:
    draw = ImageDraw.Draw(image)
    for a, b in BONES:
        if visible[a] and visible[b]:
            draw.line([tuple(uv[a]), tuple(uv[b])], fill=_keypoint_colour(b), width=2)
    for k, (u, v) in enumerate(uv):
        if visible[k]:
            draw.ellipse([u - 3, v - 3, u + 3, v + 3], fill=_keypoint_colour(k),
                         outline=(0, 0, 0))


def render_overlay(root: Path | str, sid: int, cid: int, fid: int, out_path: Path | str,
                   folder: str = "rgb") -> Path:
    """Write ``folder``'s image of (sid, cid, fid) with keypoints, bones and mask outline as PNG."""
    root, out_path = Path(root), Path(out_path)
    with Image.open(hc.image_path(root, folder, sid, cid, fid)) as im:
        image = im.convert("RGB")
    mask_path = hc.image_path(root, "mask_hand", sid, cid, fid)
    if mask_path.is_file():
        with Image.open(mask_path) as im:
            mask = np.array(im.convert("L").resize(image.size))
        pixels = np.array(image)
        pixels[mask_outline(mask)] = OUTLINE_COLOUR
        image = Image.fromarray(pixels)
    else:
        log.warning("%s missing: overlay drawn without the mask outline", mask_path)
    uv, depth = keypoints_uv(root, sid, cid, fid)
    _draw_skeleton(image, uv, depth > 0)  # points behind the camera are not drawn
    out_path.parent.mkdir(parents=True, exist_ok=True)
    image.save(out_path, format="PNG")
    return out_path
