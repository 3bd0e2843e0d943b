"""The demo's pretraining stage: the synthetic data are written once, then reused."""

from __future__ import annotations

from pathlib import Path

from contra.demo import PretrainDemo, ensure_synth, pretrain_command


def test_ensure_synth_generates_once_then_reuses(tmp_path: Path) -> None:
    synth = tmp_path / "synth.yaml"
    synth.write_text("sequences: 2\nframes: 2\ntest_sequences: 1\nsubjects: 1\nbackgrounds: 2\n"
                     "freihand_train: 2\nfreihand_eval: 2\nfreihand_subjects: 2\nworkers: 1\n")
    demo = PretrainDemo(synth_config=synth, data_dir=tmp_path / "data")
    hanco = ensure_synth(demo)
    assert hanco == tmp_path / "data" / "hanco" and (hanco / "meta.json").is_file()
    stamp = (hanco / "meta.json").stat().st_mtime_ns
    assert ensure_synth(demo) == hanco
    assert (hanco / "meta.json").stat().st_mtime_ns == stamp  # not written again


def test_pretrain_command_is_torchrun_with_the_ranks_and_overrides(tmp_path: Path) -> None:
    demo = PretrainDemo(ranks=3, overrides=["epochs=1"])
    cmd = pretrain_command(demo, tmp_path / "hanco", tmp_path / "run")
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=3" in cmd and cmd[-1] == "epochs=1"
    assert f"data_root={tmp_path / 'hanco'}" in cmd and f"run_dir={tmp_path / 'run'}" in cmd
