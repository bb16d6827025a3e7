"""Compiled pretraining steps (pretrain.model.compiled): batches padded to one shape, the same losses as eager.

On the CPU the tests trace the compiled path with the "aot_eager" backend (dynamo's graph capture and AOT autograd,
no code generation): what differs from a GPU's inductor run is only the generated kernels, which
tests/test_cuda.py checks where there is a GPU."""
from dataclasses import replace

import pytest
import torch

import pretrain.model as pm
from pretrain import PretrainConfig, run_pretraining
from pretrain.model import pad_frames, resolve_compile
from tests.fixtures import make_pretrain_corpus
from tests.test_cuda import CFG, ENC, max_curve_diff
from upstream.checkpoint import read_meta


def test_auto_compiles_on_one_gpu_only_and_bad_choices_are_named():
    assert resolve_compile("auto", torch.device("cpu")) == "off"
    assert resolve_compile("auto", torch.device("cuda")) == pm.AUTO_COMPILE_ON_CUDA
    assert resolve_compile("auto", torch.device("cuda"), several_ranks=True) == "off"
    assert resolve_compile("default", torch.device("cpu")) == "default"
    with pytest.raises(ValueError, match="compile must be one of .*'fast'"):
        resolve_compile("fast", torch.device("cpu"))


def test_padding_to_the_crop_keeps_frames_and_adds_zeros_only():
    x = torch.randn(2, 5, 3)
    m = torch.tensor([[True, False, True, False, False], [False] * 5])
    px, pm_ = pad_frames(x, 8), pad_frames(m, 8)
    assert px.shape == (2, 8, 3) and pm_.shape == (2, 8) and pm_.dtype == torch.bool
    assert torch.equal(px[:, :5], x) and not px[:, 5:].any() and not pm_[:, 5:].any()
    assert pad_frames(x, 5) is x


def test_compiled_steps_on_padded_batches_track_eager(tmp_path, monkeypatch):
    monkeypatch.setattr(pm, "BACKEND", "aot_eager")
    corpus = make_pretrain_corpus(tmp_path / "corpus", n_utts=10, seconds=(0.8, 1.2))
    # utterances of 80-120 frames, crops of 150: every compiled batch is padded, eager ones are not
    cfg = replace(CFG, steps=6, eval_interval=3, ckpt_interval=3, crop_frames=150)
    eager = run_pretraining("aalbert:small", corpus, tmp_path / "eager", cfg, device="cpu", encoder=ENC,
                            show_progress=False)
    comp = run_pretraining("aalbert:small", corpus, tmp_path / "compiled", cfg, device="cpu", encoder=ENC,
                           show_progress=False, compile="default")
    assert read_meta(eager)["compile"] == "off" and read_meta(comp)["compile"] == "default"
    assert max_curve_diff(eager, comp) <= 1e-5  # float32 on the CPU: summation order at most
    assert read_meta(eager)["pretrain_frames"] == read_meta(comp)["pretrain_frames"]  # padding is not counted


def test_each_replayed_step_starts_a_new_cuda_graph_replay(tmp_path, monkeypatch):
    """reduce-overhead marks a new replay before every forward (one per micro-batch), so a replay never overwrites
    outputs that are still read; traced with aot_eager on the CPU, where the losses stay eager's."""
    monkeypatch.setattr(pm, "BACKEND", "aot_eager")
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    corpus = make_pretrain_corpus(tmp_path / "corpus", n_utts=10, seconds=(0.8, 1.2))
    cfg = replace(CFG, steps=3, eval_interval=3, ckpt_interval=3, crop_frames=150)
    eager = run_pretraining("aalbert:small", corpus, tmp_path / "eager", cfg, device="cpu", encoder=ENC,
                            show_progress=False)
    assert not marks
    replayed = run_pretraining("aalbert:small", corpus, tmp_path / "replayed", cfg, device="cpu", encoder=ENC,
                               show_progress=False, compile="reduce-overhead")
    assert len(marks) == cfg.steps * cfg.accumulation and read_meta(replayed)["compile"] == "reduce-overhead"
    assert max_curve_diff(eager, replayed) <= 1e-5
