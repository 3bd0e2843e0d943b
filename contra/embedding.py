"""``contra embed``: the query encoder's embeddings of a seeded random subset of HanCo images.

The paper's embedding analysis (Figs. 2–4: t-SNE by background, cosine similarities, retrieval)
runs on 25,000 HanCo images. One row is one image: a green-screen frame (sid, fid), a camera and
a background variant (``subset``: gs, merged, homo, color_auto, color_sample, the positive-pair
subsets of :data:`contra.data.hanco.SUBSET_FOLDERS`). Rows are drawn without replacement over
all (frame, camera, subset) triples, so every variant is equally represented and the same frame
can appear on several backgrounds, as in the paper's figures.

Images are prepared exactly as the pretraining monitor does (:func:`contra.retrieval_set.
to_network`: centre square, antialiased resize to the checkpoint's ``pairs.image_size``,
x/255 − 0.5) and embedded in eval mode (BN running statistics): the MoCo head's output,
L2-normalised, the vector the InfoNCE loss compares. Decoding runs in DataLoader workers while
the encoder runs in the main process, so on a GPU and on CPUs alike the encoder is the bound.

Output folder (:class:`EmbeddingTable`)::

    embeddings.npy   (N, D) float32, unit norm
    keypoints.npy    (N, 21, 3) float64 world keypoints in metres (NaN where xyz/ is missing)
    index.csv        row, sid, fid, cid, subset, folder, image (relative to the HanCo root)
    embed.json       checkpoint (path, sha256, step, MLflow run), data root, image size, timing
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from contra.atomic import replacing, write_text_atomic
from contra.checkpoint import CheckpointError, load_checkpoint
from contra.config import ConfigError, load_config
from contra.data.decode import decode_rgb
from contra.data.errors import DataFormatError
from contra.data.hanco import N_CAMERAS, N_KEYPOINTS, SUBSET_FOLDERS, HanCo, image_path
from contra.nets import EmbedNet
from contra.retrieval_set import to_network_uint8

log = logging.getLogger(__name__)

__all__ = ["EmbedConfig", "EmbeddingTable", "Encoder", "ImageRows", "Rows", "draw_rows",
           "embed_rows", "load_encoder", "read_keypoints", "run_embed"]

SUBSETS = tuple(SUBSET_FOLDERS)
FILES = ("embeddings.npy", "keypoints.npy", "index.csv", "embed.json")
INDEX_COLUMNS = ("row", "sid", "fid", "cid", "subset", "folder", "image")
MOCO_FORMAT = "contra-moco/1"


@dataclass(frozen=True)
class EmbedConfig:
    """What ``contra embed`` draws and how it runs (the CLI flags)."""

    n: int = 25_000  # images (capped at the rows the data has)
    subsets: tuple[str, ...] = SUBSETS
    seed: int = 0
    batch_size: int = 256  # 128 measured 3-6 % slower on 2 cores (benchmarks/bench_embed.py)
    workers: int = 1  # decoding processes beside the encoder (0 = in the main process)
    device: str = "cpu"
    image_size: int | None = None  # None: the checkpoint's pairs.image_size

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ConfigError(f"--n must be ≥ 2, got {self.n}")
        bad = [s for s in self.subsets if s not in SUBSET_FOLDERS]
        if bad or not self.subsets:
            raise ConfigError(f"--subsets: unknown {bad or 'none given'} (known: "
                             f"{', '.join(SUBSETS)})")
        if self.batch_size < 1 or self.workers < 0:
            raise ConfigError("--batch-size must be ≥ 1 and --workers ≥ 0")


# ------------------------------------------------------------------------------------ encoder
@dataclass
class Encoder:
    """A pretrained query encoder and what it was trained with."""

    net: EmbedNet
    image_size: int
    checkpoint: dict[str, Any] = field(default_factory=dict)  # provenance for embed.json

    @property
    def mlflow_run_id(self) -> str | None:
        return self.checkpoint.get("mlflow_run_id")


def load_encoder(path: Path | str) -> Encoder:
    """The query encoder of a contra pretraining checkpoint (``last.pt``), in eval mode.

    Built from the checkpoint's own ``model`` config, so the architecture cannot disagree with the
    weights; anything else than a contra MoCo checkpoint is refused in one line.
    """
    from contra.pretrain import ModelConfig  # the pretraining config type, not its loop

    path = Path(path)
    state = load_checkpoint(path)
    config = state.get("config")
    if state.get("format") != MOCO_FORMAT or not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a contra pretraining checkpoint (format "
                              f"{state.get('format')!r}, expected {MOCO_FORMAT!r})")
    try:
        m = load_config(ModelConfig, None, config.get("model") or {})
    except ConfigError as e:
        raise CheckpointError(f"{path}: config.model: {e}") from None
    net = EmbedNet(m.arch, m.dim, m.dilate_last, m.bn_momentum, m.dropout, m.stem, m.head_bn)
    prefix = "module.encoder_q."
    weights = {k.removeprefix(prefix): v for k, v in state.get("model", {}).items()
               if isinstance(k, str) and k.startswith(prefix)}
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: model: the query encoder does not match config.model "
                              f"({str(e).splitlines()[0][:160]})") from None
    size = _image_size(config, path)
    info = {"path": str(path.resolve()), "step": state.get("step"),
            "mlflow_run_id": state.get("mlflow_run_id"), "arch": m.arch, "dim": m.dim,
            "run_dir": str(path.resolve().parent.parent)}
    return Encoder(net.eval(), size, info)


def _image_size(config: dict[str, Any], path: Path) -> int:
    pairs = config.get("pairs")
    size = pairs.get("image_size", 112) if isinstance(pairs, dict) else 112
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise CheckpointError(f"{path}: config.pairs.image_size: expected an int ≥ 8, got "
                              f"{size!r}")
    return size


# --------------------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class Rows:
    """Which images are embedded: parallel arrays, one entry per image."""

    sid: NDArray[np.int64]
    fid: NDArray[np.int64]
    cid: NDArray[np.int64]
    subset: NDArray[np.str_]

    def __len__(self) -> int:
        return int(self.sid.size)

    def folder(self, i: int) -> str:
        return SUBSET_FOLDERS[str(self.subset[i])]


def draw_rows(hanco: HanCo, n: int, subsets: Sequence[str], seed: int) -> Rows:
    """``n`` distinct (frame, camera, subset) triples of green-screen frames, seeded, sorted.

    Only green-screen frames have all five background variants (spec §1.2), so only they are
    drawn: every subset is then equally likely and comparable.
    """
    frames = np.flatnonzero(hanco.meta.is_train)
    total = frames.size * N_CAMERAS * len(subsets)
    if total < 2:
        raise DataFormatError(f"{hanco.root / 'meta.json'}: is_train: no green-screen frames "
                              f"to embed")
    if n > total:
        log.warning("embed: %d images asked, the data has %d (frame, camera, subset) rows; "
                    "taking all", n, total)
    flat = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    frame, rest = np.divmod(flat, N_CAMERAS * len(subsets))
    cid, k = np.divmod(rest, len(subsets))
    offsets = hanco.meta.offsets
    flat_frame = frames[frame]
    sid = np.searchsorted(offsets, flat_frame, side="right") - 1
    return Rows(sid.astype(np.int64), (flat_frame - offsets[sid]).astype(np.int64),
                cid.astype(np.int64), np.asarray(subsets)[k])


def read_keypoints(hanco: HanCo, rows: Rows) -> NDArray[np.float64]:
    """(N, 21, 3) world keypoints per row; NaN where the frame's xyz is missing or malformed.

    Each frame is read once, whatever the number of its rows.
    """
    keys = rows.sid * (int(hanco.meta.n_frames.max()) + 1) + rows.fid
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    per_frame = np.full((first.size, N_KEYPOINTS, 3), np.nan)
    missing = 0
    for j, i in enumerate(first):
        try:
            per_frame[j] = hanco.xyz(int(rows.sid[i]), int(rows.fid[i]))
        except DataFormatError as e:
            missing += 1
            log.debug("embed: no keypoints: %s", e)
    if missing:
        log.warning("embed: %d of %d frames have no readable xyz; their rows have NaN keypoints",
                    missing, first.size)
    out = per_frame[inverse.reshape(-1)]
    return out


class ImageRows(Dataset):
    """Network-ready images of ``rows``; ``read(root, rows, i)`` may replace the image source
    (a test's encoder that sees only the mask reads ``mask_hand/`` instead)."""

    def __init__(self, root: Path, rows: Rows, size: int,
                 read: Callable[[Path, Rows, int], Tensor] | None = None) -> None:
        self.root, self.rows, self.size = Path(root), rows, size
        self.read = read or read_image

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Tensor:
        """uint8 (3, S, S): a quarter of float32's bytes between processes; the network's
        x/255 − 0.5 is applied to the whole batch in the main process (:func:`as_network`)."""
        return to_network_uint8(self.read(self.root, self.rows, i), self.size)


def read_image(root: Path, rows: Rows, i: int) -> Tensor:
    """uint8 (3, H, W) of row ``i``; a missing or undecodable file is one line naming it."""
    path = image_path(root, rows.folder(i), int(rows.sid[i]), int(rows.cid[i]), int(rows.fid[i]))
    try:
        return decode_rgb(path.read_bytes())
    except (OSError, RuntimeError, ValueError) as e:
        raise DataFormatError(f"{path}: unreadable image ({type(e).__name__}); `contra data "
                              f"check --deep {root}` lists every damaged file") from None


# ---------------------------------------------------------------------------------- embedding
def as_network(x: Tensor) -> Tensor:
    """uint8 images → float32 x/255 − 0.5 (exactly :func:`contra.retrieval_set.to_network`);
    float input is taken as already prepared."""
    return x.float() / 255.0 - 0.5 if x.dtype == torch.uint8 else x


@torch.no_grad()
def embed_rows(net: nn.Module, data: Dataset, batch_size: int = 128, workers: int = 1,
               device: str = "cpu", progress: bool = True) -> tuple[NDArray[np.float32], float]:
    """(N, D) unit-norm float32 embeddings of ``data`` in eval mode, and the seconds taken.

    The train/eval flags are restored afterwards. On CUDA the encoder runs channels_last in
    bf16 autocast (the training setting); the normalisation is always in float32.
    """
    from tqdm import tqdm

    dev = torch.device(device)
    modes = [(m, m.training) for m in net.modules()]
    net.eval().to(dev)
    cuda = dev.type == "cuda"
    if cuda:
        net.to(memory_format=torch.channels_last)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=cuda, persistent_workers=False)
    out: list[Tensor] = []
    start = time.perf_counter()
    try:
        with tqdm(total=len(data), desc="embed", unit="img", disable=not progress,
                  dynamic_ncols=True) as bar:
            for x in loader:
                x = as_network(x.to(dev, non_blocking=True))
                if cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                    y = net(x)
                out.append(nn.functional.normalize(y.float().flatten(1), dim=1).cpu())
                bar.update(len(x))
    finally:
        for m, training in modes:
            m.training = training
    return torch.cat(out).numpy(), time.perf_counter() - start


# ------------------------------------------------------------------------------------- table
@dataclass
class EmbeddingTable:
    """One ``contra embed`` output folder in memory."""

    embeddings: NDArray[np.float32]
    keypoints: NDArray[np.float64]
    rows: Rows
    info: dict[str, Any]

    def __len__(self) -> int:
        return len(self.rows)

    def write(self, out: Path) -> list[Path]:
        """The four files of the module docstring, each written atomically."""
        out.mkdir(parents=True, exist_ok=True)
        for name, array in (("embeddings.npy", self.embeddings),
                            ("keypoints.npy", self.keypoints)):
            with replacing(out / name) as tmp, open(tmp, "wb") as f:
                np.save(f, array)
        with replacing(out / "index.csv") as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(INDEX_COLUMNS)
            r = self.rows
            for i in range(len(r)):
                folder = r.folder(i)
                w.writerow([i, r.sid[i], r.fid[i], r.cid[i], r.subset[i], folder,
                            image_path(Path("."), folder, int(r.sid[i]), int(r.cid[i]),
                                       int(r.fid[i])).as_posix()])
        write_text_atomic(out / "embed.json", json.dumps(self.info, indent=1) + "\n")
        return [out / name for name in FILES]

    @classmethod
    def read(cls, folder: Path | str) -> EmbeddingTable:
        """Read a folder written by :meth:`write`; a missing or inconsistent file is one line."""
        folder = Path(folder)
        for name in FILES:
            if not (folder / name).is_file():
                raise DataFormatError(f"{folder / name}: missing (not a `contra embed` output "
                                      f"folder)")
        emb, kp = (_read_array(folder / name) for name in ("embeddings.npy", "keypoints.npy"))
        rows = _read_index(folder / "index.csv")
        info = _read_info(folder / "embed.json")
        if emb.ndim != 2 or len(emb) != len(rows) or kp.shape != (len(rows), N_KEYPOINTS, 3):
            raise DataFormatError(f"{folder}: embeddings.npy {emb.shape}, keypoints.npy "
                                  f"{kp.shape} and index.csv ({len(rows)} rows) disagree")
        return cls(emb.astype(np.float32, copy=False), kp, rows, info)


def _read_array(path: Path) -> np.ndarray:
    """A float array saved by :meth:`EmbeddingTable.write` (never a pickle)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataFormatError(f"{path}: not a numpy array file ({str(e)[:120]})") from None
    if not np.issubdtype(array.dtype, np.floating):
        raise DataFormatError(f"{path}: expected float values, got {array.dtype}")
    return array


#: the embed.json fields that figures need, and their types
_INFO_FIELDS = {"checkpoint": dict, "data_root": str, "image_size": int, "n": int}


def _read_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataFormatError(f"{path}: not valid JSON ({str(e)[:120]})") from None
    for key, kind in _INFO_FIELDS.items():
        if not isinstance(info, dict) or not isinstance(info.get(key), kind):
            raise DataFormatError(f"{path}: field '{key}' missing or not a {kind.__name__}")
    return info


def _read_index(path: Path) -> Rows:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != INDEX_COLUMNS:
            raise DataFormatError(f"{path}: header: expected {','.join(INDEX_COLUMNS)}")
        recs = list(reader)
    try:
        ints = {k: np.array([int(r[k]) for r in recs], np.int64) for k in ("sid", "fid", "cid")}
    except (ValueError, TypeError) as e:  # a short row reads as None
        raise DataFormatError(f"{path}: sid/fid/cid: {e}") from None
    subset = np.array([r["subset"] for r in recs], dtype=np.str_)
    if bad := sorted(set(subset.tolist()) - set(SUBSET_FOLDERS)):
        raise DataFormatError(f"{path}: subset: unknown {bad}")
    return Rows(ints["sid"], ints["fid"], ints["cid"], subset)


def run_embed(checkpoint: Path, data_root: Path, out: Path, cfg: EmbedConfig,
              progress: bool = True) -> EmbeddingTable:
    """Everything ``contra embed`` does: draw, read keypoints, embed, write the folder."""
    from contra.initialisation import sha256

    encoder = load_encoder(checkpoint)
    size = cfg.image_size or encoder.image_size
    hanco = HanCo(data_root)
    rows = draw_rows(hanco, cfg.n, cfg.subsets, cfg.seed)
    keypoints = read_keypoints(hanco, rows)
    emb, seconds = embed_rows(encoder.net, ImageRows(hanco.root, rows, size), cfg.batch_size,
                              cfg.workers, cfg.device, progress)
    info = {"checkpoint": {**encoder.checkpoint, "sha256": sha256(Path(checkpoint))},
            "data_root": str(Path(data_root).resolve()), "image_size": size,
            "feature": "embedding (MoCo head, L2-normalised)", "config": asdict(cfg),
            "n": len(rows), "dim": int(emb.shape[1]), "seconds": round(seconds, 3),
            "images_per_s": round(len(rows) / max(seconds, 1e-9), 2)}
    table = EmbeddingTable(emb, keypoints, rows, info)
    table.write(Path(out))
    log.info("embedded %d images in %.1f s (%.0f images/s) → %s", len(rows), seconds,
             info["images_per_s"], out)
    return table
