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


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory, standin_root: Path) -> Path:
    """A tiny synthetic dataset (``contra synth`` formats): ``hanco/``, ``freihand/``.

    4 green-screen sequences × 6 frames (+1 test sequence), 64 px; shared by the pretraining,
    retrieval and cluster tests so the renderer runs once per session.
    """
    from contra.data.synth.generate import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(out_dir=out, seed=0, sequences=4, frames=6, test_sequences=1,
                         subjects=2, backgrounds=4, freihand_train=4, freihand_eval=4,
                         freihand_subjects=2, workers=1, mano_root=str(standin_root)))
    return out


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """``fuzzing: N cases over M properties`` when fuzz tests ran (counted in each property)."""
    import sys

    fuzz = sys.modules.get("fuzzutil")
    if fuzz is not None and fuzz.CASES:
        terminalreporter.write_line(f"fuzzing: {sum(fuzz.CASES.values())} cases over "
                                    f"{len(fuzz.CASES)} properties")
