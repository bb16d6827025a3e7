"""The masked-acoustic-model pretraining loop: resumable, logged to CSV, checkpointed atomically."""
from __future__ import annotations

import csv
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from core.io import atomic_write_text
from core.repro import default_device, provenance, seed_everything
from corpora.manifest import Corpus
from pretrain.config import PretrainConfig
from pretrain.data import AudioSource, BucketBatcher, crop_batch, load_features, resolve_source
from pretrain.masking import interpolate_masked, mask_batch, masked_l1
from pretrain.model import MaskedAcousticModel, lr_at, make_optimizer
from pretrain.state import Progress, load_training_checkpoint, save_training_checkpoint
from pretrain.stats import normalized_feature_config, stats_for_files
from upstream.checkpoint import META_FILE, CheckpointError, read_meta
from upstream.features import FeatureConfig
from upstream.transformer import EncoderConfig
from upstream.registry import RANDOM_CONTROLS, UPSTREAMS, get_preset, parse_spec

log = logging.getLogger(__name__)
LOG_FILE = "loss.csv"
LOG_COLUMNS = ("step", "epoch", "lr", "train_loss", "val_loss", "frames", "frames_per_s", "seconds")
# Measured (docs/pretraining.md): on this AVX2-only CPU (no avx512_bf16/AMX) a bfloat16-autocast training step
# of the small preset took 5-9x as long as float32, so "auto" stays float32 on CPUs.
AUTO_BF16_ON_CPU = False


def autocast_dtype(cfg: PretrainConfig, device: torch.device) -> torch.dtype | None:
    """None = float32; otherwise the autocast dtype (bfloat16 on CPU, bfloat16 mixed precision on CUDA)."""
    if cfg.precision == "float32":
        return None
    if cfg.precision == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if AUTO_BF16_ON_CPU else None


def run_identity(spec: str, src: AudioSource, cfg: PretrainConfig, encoder: EncoderConfig | None = None
                 ) -> dict[str, Any]:
    """What a checkpoint must match to be reused or resumed (`encoder` overrides the preset's, e.g. tiny tests)."""
    name, preset_name = parse_spec(spec)
    if name in RANDOM_CONTROLS or name not in UPSTREAMS or get_preset(name, preset_name).encoder is None:
        raise ValueError(f"cannot pretrain {spec!r}: only {', '.join(n for n in UPSTREAMS if n != 'mel')} are pretrained")
    preset = get_preset(name, preset_name)
    enc = replace(encoder or preset.encoder, input_dim=preset.feature.feature_dim)
    if cfg.attention_dropout is not None:
        enc = replace(enc, attention_dropout=cfg.attention_dropout)
    if encoder is not None and enc != replace(preset.encoder, input_dim=enc.input_dim):
        preset_name = f"{preset_name}+custom"
    return {"upstream": name, "preset": preset_name, "encoder": enc.to_dict(), "pretrain_config": cfg.to_dict(),
            "corpus": src.identity}


def _mismatch(meta: dict[str, Any], ident: dict[str, Any]) -> list[str]:
    return [k for k, v in ident.items() if meta.get(k) != v]


def _feature_config(src: AudioSource, base: FeatureConfig, progress: bool = True) -> FeatureConfig:
    if base.norm != "corpus":
        return base
    if src.corpus:
        return normalized_feature_config(src.corpus, base, progress=progress)
    return stats_for_files(list(src.paths), base, progress)


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = [",".join(LOG_COLUMNS)] + [",".join("" if r.get(c) is None else str(r[c]) for c in LOG_COLUMNS) for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _read_log(path: Path, upto_step: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= upto_step]


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # clean x, lengths, masked input, loss mask


@torch.no_grad()
def held_out_l1(batches: list[Batch], predict: Callable[[Batch], torch.Tensor]) -> float:
    """Masked L1 of `predict(batch)` over all held-out batches, weighted by their masked elements."""
    total, count = 0.0, 0
    for batch in batches:
        x, _, _, mask = batch
        pred = predict(batch)
        n = int(mask.sum()) * x.shape[-1]
        total += float(masked_l1(pred, x.to(pred.device), mask.to(pred.device))) * n
        count += n
    return total / max(count, 1)


def validation_loss(model: MaskedAcousticModel, batches: list[Batch], device: torch.device) -> float:
    """Masked L1 on the fixed held-out batches, eval mode, float32 (comparable across precisions)."""
    was_training = model.training
    model.eval()
    loss = held_out_l1(batches, lambda b: model(b[2].to(device), b[1].to(device)))
    model.train(was_training)
    return loss


def validation_baselines(batches: list[Batch]) -> dict[str, float]:
    """Masked L1 of two trivial predictors on the held-out batches, the yardsticks for `val_loss`:
    `mean` predicts 0 (the corpus mean of the normalised features), `interpolate` draws a line between the nearest
    unmasked neighbours (pretrain.masking.interpolate_masked)."""
    return {"mean": round(held_out_l1(batches, lambda b: torch.zeros_like(b[0])), 5),
            "interpolate": round(held_out_l1(batches, lambda b: interpolate_masked(b[0], b[1], b[3])), 5)}


def run_pretraining(spec: str, corpus_root_or_audio: "str | Path | Corpus", out_dir: Path, cfg: PretrainConfig,
                    resume: bool = False, *, stop_at_step: int | None = None,
                    device: torch.device | str | None = None, encoder: EncoderConfig | None = None,
                    show_progress: bool = True) -> Path:
    """Pretrain `spec` (e.g. "mockingjay:small") on a corpus's pretrain split or audio files; return the checkpoint dir.

    `resume` continues the checkpoint in `out_dir` (model, optimizer, schedule, RNG and data position).
    `stop_at_step` stops after that step with a checkpoint, as an interruption would (time-sliced runs).
    `encoder` replaces the preset's encoder config (its input_dim follows the features).
    """
    out_dir = Path(out_dir)
    device = torch.device(device) if device is not None else default_device()
    src = resolve_source(corpus_root_or_audio)
    ident = run_identity(spec, src, cfg, encoder)
    has_ckpt = (out_dir / META_FILE).is_file()
    if has_ckpt and not resume:
        raise FileExistsError(f"{out_dir} already holds a checkpoint: pass --resume to continue it, or use another --out")
    if has_ckpt:
        bad = _mismatch(read_meta(out_dir), ident)
        if bad:
            raise CheckpointError(f"checkpoint {out_dir} was trained with a different {', '.join(bad)}: cannot resume")
    preset = get_preset(*parse_spec(spec))
    feature = _feature_config(src, preset.feature, show_progress)
    enc_cfg = replace(encoder or preset.encoder, input_dim=feature.feature_dim)
    if cfg.attention_dropout is not None:
        enc_cfg = replace(enc_cfg, attention_dropout=cfg.attention_dropout)

    seed_everything(cfg.seed)
    feats, skipped = load_features(src.paths, feature, cfg.min_frames, progress=show_progress)
    order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    n_val = min(cfg.val_max_utterances, round(len(feats) * cfg.val_fraction)) if len(feats) > 1 else 0
    n_val = max(n_val, 1) if cfg.val_fraction > 0 and len(feats) > 1 else n_val
    val_idx, train_idx = order[:n_val], order[n_val:]
    vg = torch.Generator().manual_seed(cfg.seed + 1)  # fixed masks: the validation loss is comparable over steps
    val_batches = []
    for i in range(0, n_val, cfg.batch_size):
        x, lengths = crop_batch(feats, val_idx[i : i + cfg.batch_size], cfg.crop_frames, None)
        inp, mask = mask_batch(x, lengths, vg, cfg.mask_proportion, cfg.mask_span, cfg.mask_zero, cfg.mask_random)
        val_batches.append((x, lengths, inp, mask))

    model = MaskedAcousticModel(enc_cfg, feature.feature_dim).to(device)
    opt = make_optimizer(model, cfg.lr, cfg.betas, cfg.eps, cfg.weight_decay)
    data_g = torch.Generator().manual_seed(cfg.seed + 2)
    progress = Progress()
    if has_ckpt:
        _, progress = load_training_checkpoint(out_dir, model, opt)
        torch.set_rng_state(progress.rng["torch"])
        if device.type == "cuda" and "cuda" in progress.rng:
            torch.cuda.set_rng_state(progress.rng["cuda"], device)
        data_g.set_state(progress.rng["data"])
        log.info("resuming %s from step %d", out_dir, progress.step)
    rows = _read_log(out_dir / LOG_FILE, progress.step) if has_ckpt else []  # rows past the checkpoint are redone
    meta = {**ident, "feature": feature.to_dict(), "skipped_audio": skipped, "provenance": provenance(device),
            "train_utterances": len(train_idx), "val_utterances": n_val,
            "val_baselines": validation_baselines(val_batches) if val_batches else None}
    amp = autocast_dtype(cfg, device)
    meta["precision"] = "float32" if amp is None else str(amp).removeprefix("torch.")
    batcher = BucketBatcher([feats[i].shape[0] for i in train_idx], cfg.batch_size, cfg.seed)
    batches = batcher.epoch(progress.epoch)

    def save() -> None:
        done = {**meta, "complete": progress.step >= cfg.steps}
        save_training_checkpoint(out_dir, model, opt, progress, done)
        _write_log(out_dir / LOG_FILE, rows)

    def snapshot() -> None:
        progress.rng = {"torch": torch.get_rng_state(), "data": data_g.get_state()}
        if device.type == "cuda":  # dropout masks on the GPU come from its own generator
            progress.rng["cuda"] = torch.cuda.get_rng_state(device)

    snapshot()
    if progress.step >= cfg.steps:
        return out_dir
    last_stop = min(cfg.steps, stop_at_step) if stop_at_step is not None else cfg.steps
    if progress.step == 0 and val_batches and not rows:  # the curve's starting point
        progress.val_loss = validation_loss(model, val_batches, device)
        rows.append({"step": 0, "epoch": 0, "lr": "0", "train_loss": None, "val_loss": f"{progress.val_loss:.5f}",
                     "frames": 0, "frames_per_s": None, "seconds": "0"})
    if meta["val_baselines"]:
        log.info("held-out masked L1 of trivial predictors: corpus mean %.4f, linear interpolation %.4f",
                 meta["val_baselines"]["mean"], meta["val_baselines"]["interpolate"])
    model.train()
    bar = tqdm(total=cfg.steps, initial=progress.step, desc=f"pretrain {spec}", unit="step", disable=not show_progress)
    win_frames, win_t, t_last = 0, 0.0, time.perf_counter()
    try:
        while progress.step < last_stop:
            lr = lr_at(progress.step, cfg.steps, cfg.lr, cfg.warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            step_loss, step_frames = 0.0, 0
            epoch, pos = progress.epoch, progress.batch_in_epoch  # committed only when the step completes
            for _ in range(cfg.accumulation):
                if pos >= len(batches):
                    epoch, pos = epoch + 1, 0
                    batches = batcher.epoch(epoch)
                idx = [train_idx[j] for j in batches[pos]]
                pos += 1
                x, lengths = crop_batch(feats, idx, cfg.crop_frames, data_g)
                inp, mask = mask_batch(x, lengths, data_g, cfg.mask_proportion, cfg.mask_span, cfg.mask_zero,
                                       cfg.mask_random)
                x, inp, lengths, mask = x.to(device), inp.to(device), lengths.to(device), mask.to(device)
                with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                    pred = model(inp, lengths)
                loss = masked_l1(pred, x, mask)
                (loss / cfg.accumulation).backward()
                step_loss += loss.item() / cfg.accumulation
                step_frames += int(lengths.sum())
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            now = time.perf_counter()
            progress.seconds += now - t_last
            win_t += now - t_last
            t_last = now
            win_frames += step_frames
            progress.step += 1
            progress.frames += step_frames
            progress.epoch, progress.batch_in_epoch = epoch, pos
            snapshot()
            val = None
            if progress.step % cfg.eval_interval == 0 or progress.step == cfg.steps:
                val = progress.val_loss = validation_loss(model, val_batches, device) if val_batches else None
                t_last = time.perf_counter()  # validation time is not training throughput
            if progress.step % cfg.log_interval == 0 or val is not None or progress.step == last_stop:
                fps = win_frames / max(win_t, 1e-9)
                rows.append({"step": progress.step, "epoch": progress.epoch, "lr": f"{lr:.3e}",
                             "train_loss": f"{step_loss:.5f}", "val_loss": None if val is None else f"{val:.5f}",
                             "frames": progress.frames, "frames_per_s": f"{fps:.1f}",
                             "seconds": f"{progress.seconds:.2f}"})
                bar.set_postfix(loss=f"{step_loss:.4f}", val="-" if progress.val_loss is None else f"{progress.val_loss:.4f}",
                                fps=f"{fps:.0f}")
                win_frames, win_t = 0, 0.0
            bar.update(1)
            if progress.step % cfg.ckpt_interval == 0 or progress.step == last_stop:
                save()
                t_last = time.perf_counter()
    except KeyboardInterrupt:
        log.warning("interrupted: saving step %d to %s (continue with --resume)", progress.step, out_dir)
        save()
        raise
    finally:
        bar.close()
    base = meta["val_baselines"]
    if progress.step >= cfg.steps and base and progress.val_loss is not None and progress.val_loss > base["interpolate"]:
        log.warning("%s: held-out masked L1 %.4f is still above linear interpolation between unmasked neighbours "
                    "(%.4f): the model has not learned to use local context; train longer", out_dir,
                    progress.val_loss, base["interpolate"])
    return out_dir


def ensure_pretrained(spec: str, corpus: Corpus, out_dir: Path, cfg: PretrainConfig, *,
                      encoder: EncoderConfig | None = None, device: torch.device | str | None = None,
                      show_progress: bool = True) -> Path:
    """Reuse a complete matching checkpoint in `out_dir`, resume an incomplete matching one, else train.

    A checkpoint trained with another config/corpus is moved aside (`<out_dir>.replaced-<time>`), never deleted.
    """
    out_dir = Path(out_dir)
    if (out_dir / META_FILE).is_file():
        meta = read_meta(out_dir)
        bad = _mismatch(meta, run_identity(spec, resolve_source(corpus), cfg, encoder))
        if not bad:
            if meta.get("complete"):
                return out_dir
            return run_pretraining(spec, corpus, out_dir, cfg, resume=True, encoder=encoder, device=device,
                                   show_progress=show_progress)
        aside = out_dir.with_name(f"{out_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("checkpoint %s differs in %s: moving it to %s and retraining", out_dir, ", ".join(bad), aside)
        shutil.move(str(out_dir), str(aside))
    return run_pretraining(spec, corpus, out_dir, cfg, encoder=encoder, device=device, show_progress=show_progress)
