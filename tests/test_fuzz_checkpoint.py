"""Fuzzing checkpoint loading: damaged files, forbidden globals, mutated contents for fine-tuning.

``CheckpointManager.load`` (what a resume reads) returns a dict or raises a one-line error naming
the file; a global outside ``weights_only``'s allow-list is refused and never called; and
``contra.initialisation.transfer_pretrained`` (what ``init.mode=moco`` does with a loaded file)
either transfers the whole, finite backbone or raises one line naming the file.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fuzzutil import (
    DANGEROUS,
    GLOBAL_NAMES,
    JUNK,
    Marker,
    count,
    fuzz,
    mutated,
    mutated_array,
    mutated_bytes,
    outcome,
    scratch,
    swap_global,
)
from hypothesis import given
from hypothesis import strategies as st

from contra.checkpoint import LAST, CheckpointManager, capture_rng_state, load_checkpoint
from contra.config import to_dict
from contra.initialisation import InitReport, transfer_pretrained
from contra.nets import BACKBONE_KEYS, ManoNet
from contra.pretrain import PretrainConfig

# damaged legacy files declare any pickle protocol; torch warns before failing
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One torch thread: copying 11M parameters per example with spinning OpenMP threads on a
    busy 2-core machine takes 10x longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@cache
def _state() -> dict[str, Any]:
    """A small checkpoint in the layout of a pretraining ``last.pt`` (moco.md §5.5)."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {"format": "contra-moco/1", "model": net.state_dict(), "optimizer": opt.state_dict(),
            "epoch": 1, "step": 5, "step_in_epoch": 2, "rng": [capture_rng_state()],
            "world_size": 1, "config": to_dict(PretrainConfig()), "mlflow_run_id": "abc",
            "history": {"loss": [1.0, 0.5]}}


@cache
def checkpoint_bytes(legacy: bool) -> bytes:
    buf = io.BytesIO()
    torch.save(_state(), buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@fuzz(150)
@given(data=st.data())
def test_damaged_file(legacy: bool, data: st.DataObject) -> None:
    blob = data.draw(mutated_bytes(checkpoint_bytes(legacy)), label="last.pt")
    count(f"checkpoint bytes {'legacy' if legacy else 'zip'}")
    with scratch() as d:
        path = d / "checkpoints" / LAST
        path.parent.mkdir()
        path.write_bytes(blob)
        ok, got = outcome(lambda: CheckpointManager(d).load(), path)
        if ok:
            assert isinstance(got, dict)


# ------------------------------------------------------------------------- forbidden globals
def _with_global(target: tuple[str, str], arg: str, legacy: bool) -> bytes:
    """A checkpoint whose ``config`` entry calls ``target(arg)`` when unpickled."""
    state = {**_state(), "config": Marker(arg)}
    buf = io.BytesIO()
    torch.save(state, buf, _use_new_zipfile_serialization=not legacy, pickle_protocol=2)
    if legacy:
        return swap_global(buf.getvalue(), target)
    return _rezip(buf.getvalue(), lambda name, body: swap_global(body, target)
                  if name.endswith("/data.pkl") else body)


@fuzz(100)
@given(target=st.one_of(st.sampled_from(DANGEROUS), st.tuples(GLOBAL_NAMES, GLOBAL_NAMES)),
       legacy=st.booleans())
def test_forbidden_globals(target: tuple[str, str], legacy: bool) -> None:
    count("checkpoint forbidden globals")
    with scratch() as d:
        canary = d / "canary"
        canary.write_text("still here")
        arg = f"rm -f {canary}" if target[1] == "system" else str(canary)
        path = d / "last.pt"
        path.write_bytes(_with_global(target, arg, legacy))
        ok, got = outcome(lambda: load_checkpoint(path), path)
        assert canary.read_text() == "still here", f"{target} ran"
        assert not ok, "a checkpoint calling a global loaded"
        if target in DANGEROUS:
            assert "contains objects other than tensors" in got, got


def test_rewritten_zip_still_loads(tmp_path: Path) -> None:
    """Rewriting the zip as above keeps a loadable file, so refusals come from the unpickler."""
    path = tmp_path / "last.pt"
    path.write_bytes(_rezip(checkpoint_bytes(False)))
    assert load_checkpoint(path)["step"] == 5


def _rezip(blob: bytes, change: Callable[[str, bytes], bytes] = lambda n, b: b) -> bytes:
    """A torch zip file written again, each entry passed through ``change``."""
    src, out = zipfile.ZipFile(io.BytesIO(blob)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, change(info.filename, src.read(info)))
    return out.getvalue()


# ------------------------------------------------------------- a loaded file for fine-tuning
def is_backbone(key: str) -> bool:
    return key.split(".", 1)[0] in BACKBONE_KEYS


@cache
def _net() -> ManoNet:
    return ManoNet("resnet18", dilate_last=False)


@cache
def _pretrained() -> dict[str, Any]:
    """A pretraining checkpoint's entries that fine-tuning reads: the query encoder, lineage."""
    encoder = {f"module.encoder_q.{k}": v.clone() for k, v in _net().state_dict().items()
               if is_backbone(k)}
    return {"model": encoder, "mlflow_run_id": "abc",
            "config": {"pairs": {"strategies": ["multiview", "temporal"]}}}


def _tensor(value: Any) -> Any:
    """A mutated array as a tensor where torch has a dtype for it (else left as it is)."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        return torch.from_numpy(np.ascontiguousarray(value))
    return value


@st.composite
def mutated_state(draw: st.DrawFn, state: dict[str, Any]) -> dict[str, Any]:
    """Tensors dropped, reshaped, retyped or made non-finite; junk keys; mutated lineage."""
    out, model = dict(state), dict(state["model"])
    keys = sorted(model)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["tensor", "tensor", "drop", "extra", "model", "lineage"]))
        key = draw(st.sampled_from(keys))
        if op == "tensor" and isinstance(model.get(key), torch.Tensor):
            model[key] = _tensor(draw(mutated_array(model[key].numpy())))
        elif op == "drop":
            model.pop(key, None)
        elif op == "extra":
            model[draw(st.one_of(st.text(max_size=20), st.integers()))] = draw(JUNK)
        elif op == "model":
            out["model"] = draw(JUNK)
        else:
            lineage = draw(mutated({k: state[k] for k in ("mlflow_run_id", "config")}))
            out.update(lineage if isinstance(lineage, dict) else {"config": lineage})
    if isinstance(out.get("model"), dict):
        out["model"] = model
    return out


@fuzz(120)
@given(data=st.data())
def test_transfer_pretrained(data: st.DataObject) -> None:
    state = data.draw(mutated_state(_pretrained()), label="state")
    count("checkpoint transfer_pretrained")
    path = Path("/runs/pretrain/checkpoints/last.pt")
    report = InitReport("full", "moco", "none")
    ok, _ = outcome(lambda: transfer_pretrained(_net(), state, path, report), path)
    if ok:
        backbone = {k: v for k, v in _net().state_dict().items() if is_backbone(k)}
        assert report.transferred == len(backbone)
        assert all(torch.isfinite(v).all() for v in backbone.values() if v.is_floating_point())
        assert isinstance(report.pretrain_run_id, str) and isinstance(report.strategy, str)


def _found(change: str) -> dict[str, Any]:
    """Loaded files the fuzzing (or reading the code) found tracebacks or silent NaNs for."""
    state = _pretrained()
    model, key = dict(state["model"]), "module.encoder_q.bn1.bias"
    changes = {
        "None tensor": {"model": {**model, key: None}},
        "int key": {"model": {**model, 7: torch.zeros(3)}},
        "complex tensor": {"model": {**model, key: model[key].to(torch.complex64)}},
        "NaN tensor": {"model": {**model, key: torch.full_like(model[key], torch.nan)}},
        "tensor run id": {"mlflow_run_id": torch.zeros(2)},
        "pairs a list": {"config": {"pairs": ["multiview"]}},
        "strategies ints": {"config": {"pairs": {"strategies": [1, 2]}}},
    }
    return {**state, **changes[change]}


@pytest.mark.parametrize("change", ["None tensor", "int key", "complex tensor", "NaN tensor",
                                    "tensor run id", "pairs a list", "strategies ints"])
def test_found(change: str) -> None:
    path = Path("/runs/pretrain/checkpoints/last.pt")
    report = InitReport("full", "moco", "none")
    ok, got = outcome(lambda: transfer_pretrained(_net(), _found(change), path, report), path)
    n = sum(1 for k in _net().state_dict() if is_backbone(k))
    if change in ("None tensor", "complex tensor"):
        assert not ok and f"only {n - 1} of {n} resnet18 backbone tensors" in got, got
    elif change == "NaN tensor":
        assert not ok and "'bn1.bias' has NaN" in got, got
    else:
        assert ok and report.transferred == n and report.pretrain_run_id in ("abc", "")
