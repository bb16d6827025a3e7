"""`s3prl:NAME` upstreams: s3prl's hub imports under this torchaudio only through the shim, the core toolkit never
imports s3prl, a checkpoint exported by pretrain.export_s3prl gives our model's hidden states through
s3prl:mockingjay, and a pickled call inside a checkpoint never runs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark.cli import main
from pretrain.export_s3prl import export_s3prl
from tests.fixtures import make_tiny_corpus
from tests.test_upstream_contract import toolkit_ckpt, waves
from upstream.registry import build_upstream, load_upstream, static_shape
from upstream.s3prl_compat import safe_torch_load
from upstream.s3prl_hub import read_plain

pytest.importorskip("s3prl")
ROOT = Path(__file__).resolve().parent.parent


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_hub_imports_through_the_shim_only_and_the_toolkit_never_imports_s3prl():
    plain = _python("import s3prl.hub")
    assert plain.returncode != 0 and "set_audio_backend" in plain.stderr  # why the shim exists (torchaudio 2.11)
    both = _python("import sys, benchmark.cli, benchmark.run.runner, upstream.registry, upstream.s3prl_hub\n"
                   "print(sorted(m for m in sys.modules if m == 's3prl' or m.startswith('s3prl.')))\n"
                   "from upstream.s3prl_compat import import_s3prl_hub\n"
                   "hub = import_s3prl_hub()\nprint(callable(hub.mockingjay_local), callable(hub.tera_local))")
    assert both.returncode == 0, both.stderr[-2000:]
    assert both.stdout.splitlines() == ["[]", "True True"], both.stdout  # no s3prl until the adapter asks for it


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("s3prl")
    ckpt = toolkit_ckpt(d / "mj", share=False, stack=1)
    out, _ = export_s3prl(ckpt, d / "mj.ckpt")
    return ckpt, out


def test_s3prl_mockingjay_reproduces_our_model(exported):
    ckpt, out = exported
    ours, theirs = load_upstream(ckpt).eval(), build_upstream("s3prl:mockingjay", ckpt=out)
    assert theirs.frame_rule == ours.frame_rule and static_shape("s3prl:mockingjay", out).num_hidden_states == 3
    wavs, lengths = waves()
    with torch.no_grad():
        a, la = ours(wavs, lengths)
        b, lb = theirs(wavs, lengths)
    assert torch.equal(la, lb) and len(a) == len(b) == 3
    for k, (x, y) in enumerate(zip(a, b)):
        assert (x - y).abs().max().item() <= 1e-4, f"hidden state {k}"


class _Touch:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_pickled_call_in_the_checkpoint_never_runs(exported, tmp_path):
    _, out = exported
    state = torch.load(out, weights_only=True)
    marker = tmp_path / "code-ran"
    state["Args"] = _Touch(marker)  # s3prl's loader (weights_only=False) would call Path.touch(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(state, evil)
    plain, dropped = read_plain(evil)
    assert plain["Args"] is None and len(dropped) == 1 and dropped[0].startswith("Args (")
    up = build_upstream("s3prl:mockingjay", ckpt=evil)
    assert up.num_hidden_states == 3 and not marker.exists()
    assert isinstance(safe_torch_load(evil)["Transformer"], dict) and not marker.exists()
    torch.load(evil, weights_only=False)  # what s3prl's own loader does with the user's file: the payload is live
    assert marker.exists()


def test_cli_errors_for_s3prl_upstreams(exported, tmp_path, capsys):
    _, out = exported
    corpus = make_tiny_corpus(tmp_path / "c", n_speakers=2, per_speaker={"train": 2, "dev": 1, "test": 1})
    base = ["--dry-run", "--corpus", str(corpus.root), "--results-dir", str(tmp_path / "r")]
    cases = [
        (["--upstream", "s3prl:mockingjay"], "--ckpt s3prl:mockingjay=PATH"),
        (["--upstream", "s3prl:hubert"], "unknown preset 'hubert' for upstream 's3prl'"),
        (["--upstream", "s3prl:mockingjay", "--ckpt", f"s3prl={out}"], "name the hub entry as s3prl:NAME"),
        (["--upstream", "s3prl:mockingjay", "--ckpt", f"s3prl:mockingjay={tmp_path / 'no.ckpt'}"], "not found"),
    ]
    for extra, msg in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err
    assert main(base + ["--upstream", "s3prl:mockingjay", "--ckpt", f"s3prl:mockingjay={out}", "--task",
                        "phone_linear", "--seeds", "1", "--fractions", "1", "--mode", "last"]) == 0
    assert "s3prl:mockingjay: 3 hidden states" in capsys.readouterr().out
