"""Shared fixtures: one stand-in MANO model per test session, used wherever a model is needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from contra.mano.standin import write_standin


@pytest.fixture(scope="session")
def standin_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with the stand-in MANO_RIGHT.pkl / MANO_LEFT.pkl / chumpy/MANO_RIGHT.pkl."""
    root = tmp_path_factory.mktemp("mano")
    write_standin(root, seed=0)
    return root


@pytest.fixture(autouse=True)
def _mano_root_env(standin_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Code that falls back to the default model uses the session's stand-in, not ~/.cache."""
    monkeypatch.setenv("CONTRA_MANO_ROOT", str(standin_root))
