"""What a new user tripped on: `--dry-run` naming a fine-tuning budget with `--no-finetune`, a manifest flag without
help, and atomically written files (checkpoints, REPORT.md, command.txt, cache meta.json) left `-rw-------` under
umask 022."""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from benchmark.cli import main
from core.io import atomic_write_bytes, atomic_write_json, atomic_write_text, new_file_mode
from corpora.__main__ import main as corpora_main
from corpora.usermanifest import COLUMNS
from tests.fixtures import make_tiny_corpus
from upstream.checkpoint import save_checkpoint


def test_dry_run_says_no_fine_tuning_when_none_is_planned(tmp_path, capsys):
    corpus = make_tiny_corpus(tmp_path / "c", n_speakers=2, per_speaker={"train": 2, "dev": 1, "test": 1})
    base = ["--dry-run", "--corpus", str(corpus.root), "--results-dir", str(tmp_path / "r"), "--fractions", "1",
            "--seeds", "1", "--task", "phone_linear"]
    cases = [([], "fine-tuning: none"),  # the main job fine-tunes nothing
             (["--full"], "fine-tuning: converge"),  # the full job's runs for mockingjay / aalbert
             (["--full", "--no-finetune"], "fine-tuning: none"),
             (["--full", "--upstream", "mel"], "fine-tuning: none"),  # nothing to fine-tune
             (["--no-finetune", "--upstream", "mockingjay_random", "--mode", "last,finetune"], "fine-tuning: converge")]
    for extra, want in cases:
        assert main(base + extra) == 0, extra
        out = capsys.readouterr().out
        assert want in out, (extra, out)
        assert ("finetune " in out) == want.endswith("converge"), (extra, out)  # the plan's table agrees
    assert not (tmp_path / "r" / "runs.csv").exists()


def test_manifest_flag_help_names_every_column(capsys):
    with pytest.raises(SystemExit) as done:
        corpora_main(["prepare", "manifest", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    options = out[out.rindex("\n  --manifest MANIFEST"):]  # the option's entry, not the usage line
    text = " ".join(options[:options.index("--lab-units")].split())
    assert all(c in text for c in COLUMNS) and "required" in text, text


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask,want", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=["022", "077", "002"])
def test_atomic_writes_and_checkpoints_respect_the_umask(tmp_path, mask, want):
    """Temp files renamed into place used to keep mkstemp's 0o600 (and safetensors writes its file 0o600): what
    appears must have the mode `open(path, "w")` would give it."""
    with umask(mask):
        assert new_file_mode() == want
        atomic_write_text(tmp_path / "REPORT.md", "# report\n")
        atomic_write_json(tmp_path / "meta.json", {"k": 1})
        atomic_write_bytes(tmp_path / "mj.ckpt", b"\0")
        atomic_write_text(tmp_path / "REPORT.md", "# replaced\n")  # replacing keeps the umask's mode too
        ckpt = save_checkpoint(tmp_path / "ckpt", {"model": {"w": torch.zeros(2)}}, {"step": 1})
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    written = [tmp_path / "REPORT.md", tmp_path / "meta.json", tmp_path / "mj.ckpt", *ckpt.iterdir()]
    assert len(written) == 5 and mode(plain) == want
    assert {p.name: mode(p) for p in written} == {p.name: want for p in written}
    assert not list(tmp_path.glob(".*.tmp")) and not list(ckpt.glob(".*.tmp"))
