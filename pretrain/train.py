"""The masked-acoustic-model pretraining loop: resumable, logged to CSV, checkpointed atomically.

`run_pretraining` reads like the recipe it runs: set up (identity, data, model and optimiser, resume), then a loop
of small named steps (train step, evaluation, log row, checkpoint, stopping rule). Started by torchrun, every rank
runs the same loop on its share of each global batch (pretrain.distributed); only rank 0 writes.
"""
from __future__ import annotations

import csv
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from core.allocator import reuse_freed_blocks
from core.io import atomic_write_text
from core.repro import default_device, deterministic_kernels, fast_bfloat16, provenance, seed_everything
from corpora.manifest import Corpus
from pretrain import distributed
from pretrain.config import PretrainConfig
from pretrain.distributed import Ranks
from pretrain.data import AudioSource, BucketBatcher, crop_batch, load_features, resolve_source
from pretrain.masking import interpolate_masked, mask_batch, masked_l1, reconstruction_l1
from pretrain.model import MaskedAcousticModel, compiled, lr_at, make_optimizer, pad_frames, resolve_compile
from pretrain.state import Progress, load_training_checkpoint, save_training_checkpoint
from pretrain.stats import normalized_feature_config, stats_for_files
from upstream.checkpoint import META_FILE, CheckpointError, read_meta
from upstream.features import FeatureConfig
from upstream.transformer import EncoderConfig
from upstream.registry import parse_spec, pretrainable_family

log = logging.getLogger(__name__)
LOG_FILE = "loss.csv"
LOG_COLUMNS = ("step", "epoch", "lr", "train_loss", "val_loss", "frames", "frames_per_s", "seconds", "cpu_seconds")

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # clean x, lengths, masked input, loss mask


# On CUDA "auto" takes bfloat16 autocast from this hidden size up (base and large: the step is bound by its matrix
# products, which bf16 runs several times faster than float32), float32 below it: a small model's step is bound by
# kernel launches, and autocast adds a cast kernel before each product. perf/device_check.py measures both dtypes
# per size (results/device_check.json); move the threshold where it says so.
AUTO_BF16_MIN_HIDDEN_ON_CUDA = 768


def autocast_dtype(cfg: PretrainConfig, device: torch.device, hidden_size: int | None = None) -> torch.dtype | None:
    """None = float32; otherwise the autocast dtype (bfloat16 on CPU, bfloat16 mixed precision on CUDA). "auto" on
    CUDA: bfloat16 for models at least AUTO_BF16_MIN_HIDDEN_ON_CUDA wide (`hidden_size`; None: any width). "auto" on a
    CPU: bfloat16 where it multiplies bfloat16 natively (core.repro.fast_bfloat16: AMX or AVX512-BF16; measured on an
    Intel Xeon with AMX, the small presets trained 1.4x as fast with the same held-out loss, docs/pretraining.md),
    float32 elsewhere (an AVX2-only CPU emulates bfloat16: a step took 5-9x as long)."""
    if cfg.precision == "float32":
        return None
    if cfg.precision == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        wide = hidden_size is None or hidden_size >= AUTO_BF16_MIN_HIDDEN_ON_CUDA
        return torch.bfloat16 if wide and torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if fast_bfloat16(device) else None


def model_configs(spec: str, cfg: PretrainConfig, encoder: EncoderConfig | None = None
                  ) -> tuple[str, FeatureConfig, EncoderConfig]:
    """(preset label, front-end without statistics, encoder) that `cfg` trains for `spec`.

    The recipe's shape options (frame stacking, Pre-LN, attention dropout) apply on top of the preset;
    `encoder` replaces the preset's encoder (tiny tests), which marks the preset label `+custom`.
    """
    fam, preset_name = pretrainable_family(spec)
    base_feature, base_encoder = fam.architecture(preset_name)
    feature = base_feature if cfg.downsample is None else replace(base_feature, downsample=cfg.downsample)
    pinned = getattr(fam.presets[preset_name], "stacking", None)
    if pinned is not None and feature.downsample != pinned:
        raise ValueError(f"--upstream {spec}: the preset takes {pinned} frame(s) per step, but recipe {cfg.recipe!r} "
                         f"stacks {feature.downsample} (pretrain it with a recipe that does not stack, as its reference "
                         f"was: `python -m pretrain --upstream {spec} --recipe preln`)")
    enc = replace(encoder or base_encoder, input_dim=feature.feature_dim)
    if encoder is not None and enc != replace(base_encoder, input_dim=enc.input_dim):
        preset_name = f"{preset_name}+custom"
    shape = {"attention_dropout": cfg.attention_dropout, "pre_layer_norm": cfg.pre_layer_norm}
    enc = replace(enc, **{k: v for k, v in shape.items() if v is not None})
    return preset_name, feature, enc


def run_identity(spec: str, src: AudioSource, cfg: PretrainConfig, encoder: EncoderConfig | None = None
                 ) -> dict[str, Any]:
    """What a checkpoint must match to be reused or resumed."""
    preset_name, _, enc = model_configs(spec, cfg, encoder)
    return {"upstream": parse_spec(spec)[0], "preset": preset_name, "encoder": enc.to_dict(),
            "pretrain_config": cfg.to_dict(), "corpus": src.identity}


def as_read(meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's `meta` with its configs as the dataclasses read them: a field added after the checkpoint was
    written appears at its default, so it compares equal to a run that leaves the field there."""
    meta = dict(meta)
    for key, cls in (("pretrain_config", PretrainConfig), ("encoder", EncoderConfig)):
        if isinstance(meta.get(key), dict):
            try:
                meta[key] = cls.from_dict(meta[key]).to_dict()
            except (ValueError, TypeError):
                pass  # unreadable: left as written, so it differs
    return meta


def _mismatch(meta: dict[str, Any], ident: dict[str, Any]) -> list[str]:
    """The identity keys in which a checkpoint's `meta` (as read: `as_read`) differs from `ident`."""
    meta = as_read(meta)
    return [k for k, v in ident.items() if meta.get(k) != v]


def _with_stats(src: AudioSource, base: FeatureConfig, progress: bool = True) -> FeatureConfig:
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


@torch.no_grad()
def held_out_sums(batches: list[Batch], predict: Callable[[Batch], torch.Tensor]) -> tuple[float, int]:
    """(summed masked L1, masked elements) of `predict(batch)` over the held-out batches."""
    total, count = 0.0, 0
    for batch in batches:
        x, _, _, mask = batch
        pred = predict(batch)
        n = int(mask.sum()) * x.shape[-1]
        total += float(masked_l1(pred, x.to(pred.device), mask.to(pred.device))) * n
        count += n
    return total, count


def held_out_l1(batches: list[Batch], predict: Callable[[Batch], torch.Tensor]) -> float:
    """Masked L1 of `predict(batch)` over all held-out batches, weighted by their masked elements."""
    total, count = held_out_sums(batches, predict)
    return total / max(count, 1)


def validation_loss(model: MaskedAcousticModel, batches: list[Batch], device: torch.device,
                    ranks: Ranks = Ranks()) -> float:
    """Masked L1 on the fixed held-out batches, eval mode, float32 (comparable across precisions). With several
    ranks each scores every W-th batch and the sums are added over ranks: one value, the same on every rank."""
    was_training = model.training
    model.eval()
    total, count = held_out_sums(batches[ranks.rank::ranks.world], lambda b: model(b[2].to(device), b[1].to(device)))
    if ranks.active:
        total, count = distributed.all_sum([total, count], device)
    model.train(was_training)
    return total / max(count, 1)


def validation_baselines(batches: list[Batch]) -> dict[str, float]:
    """Masked L1 of two trivial predictors on the held-out batches, the yardsticks for `val_loss`:
    `mean` predicts 0 (the corpus mean of the normalised features), `interpolate` draws a line between the nearest
    unmasked neighbours (pretrain.masking.interpolate_masked)."""
    return {"mean": round(held_out_l1(batches, lambda b: torch.zeros_like(b[0])), 5),
            "interpolate": round(held_out_l1(batches, lambda b: interpolate_masked(b[0], b[1], b[3])), 5)}


@dataclass
class Run:
    """Everything one pretraining run holds between steps."""

    spec: str
    out_dir: Path
    cfg: PretrainConfig
    device: torch.device
    feature: FeatureConfig
    model: MaskedAcousticModel
    opt: torch.optim.Optimizer
    feats: list[torch.Tensor]
    train_idx: list[int]
    val_batches: list[Batch]
    batcher: BucketBatcher
    data_g: torch.Generator
    amp: torch.dtype | None
    meta: dict[str, Any]
    progress: Progress = field(default_factory=Progress)
    rows: list[dict[str, Any]] = field(default_factory=list)
    window: list[float] = field(default_factory=lambda: [0, 0.0])  # frames and seconds since the last log row
    ranks: Ranks = field(default_factory=Ranks)
    ddp: torch.nn.Module | None = None  # the DistributedDataParallel wrapper of `model` with several ranks
    compile: str = "off"  # resolved compile mode (pretrain.model.resolve_compile)
    forward: Callable[..., torch.Tensor] | None = None  # what a step calls: `net`, or its compiled form

    @property
    def step_frames(self) -> int | None:
        """The one time length a compiled step sees (batches padded to the crop), None when eager."""
        return None if self.compile == "off" else self.cfg.crop_frames

    @property
    def net(self) -> torch.nn.Module:
        """What a training step calls: `model`, or its DDP wrapper (which all-reduces the gradients)."""
        return self.ddp or self.model


def _masks(cfg: PretrainConfig, x: torch.Tensor, lengths: torch.Tensor, g: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    return mask_batch(x, lengths, g, cfg.mask_proportion, cfg.mask_span, cfg.mask_zero, cfg.mask_random)


def split_data(feats: list[torch.Tensor], cfg: PretrainConfig) -> tuple[list[int], list[Batch]]:
    """Seeded train/held-out split; held-out batches with fixed crops and fixed masks (a comparable curve)."""
    order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    n_val = min(cfg.val_max_utterances, round(len(feats) * cfg.val_fraction)) if len(feats) > 1 else 0
    n_val = max(n_val, 1) if cfg.val_fraction > 0 and len(feats) > 1 else n_val
    val_idx, train_idx = order[:n_val], order[n_val:]
    vg = torch.Generator().manual_seed(cfg.seed + 1)
    val_batches = []
    for i in range(0, n_val, cfg.batch_size):
        x, lengths = crop_batch(feats, val_idx[i : i + cfg.batch_size], cfg.crop_frames, None)
        val_batches.append((x, lengths, *_masks(cfg, x, lengths, vg)))
    return train_idx, val_batches


def start_run(spec: str, source: "str | Path | Corpus", out_dir: Path, cfg: PretrainConfig, resume: bool,
              device: torch.device, encoder: EncoderConfig | None, show_progress: bool, compile: str = "auto") -> Run:
    """Check the output directory, load the audio as features, build the model and optimiser, restore a resume.

    With several ranks each loads every feature (the data order is global); rank 0 alone computes the corpus
    normalisation (and caches it) and hands it to the others, so every rank normalises with the same numbers."""
    ranks = distributed.current()
    src = resolve_source(source)
    ident = run_identity(spec, src, cfg, encoder)
    has_ckpt = (out_dir / META_FILE).is_file()
    if has_ckpt and not resume:
        raise FileExistsError(f"{out_dir} already holds a checkpoint: pass --resume to continue it, or use another --out")
    previous = read_meta(out_dir) if has_ckpt else {}
    if has_ckpt and (bad := _mismatch(previous, ident)):
        raise CheckpointError(f"checkpoint {out_dir} was trained with a different {', '.join(bad)}: cannot resume")
    if cfg.precision == "auto" and previous.get("precision") in ("float32", "bfloat16"):
        # "auto" resolves per machine (autocast_dtype): a resumed run keeps the precision it was trained in, on this
        # machine or another, unless a precision is asked for
        cfg = replace(cfg, precision=previous["precision"])
    _, base_feature, enc_cfg = model_configs(spec, cfg, encoder)
    if ranks.active:
        feature = distributed.broadcast(_with_stats(src, base_feature, show_progress) if ranks.main else None, ranks)
    else:
        feature = _with_stats(src, base_feature, show_progress)

    seed_everything(cfg.seed)
    feats, skipped = load_features(src.paths, feature, cfg.min_frames, progress=show_progress)
    train_idx, val_batches = split_data(feats, cfg)
    model = MaskedAcousticModel(enc_cfg, feature.feature_dim).to(device)
    opt = make_optimizer(model, cfg.lr, cfg.betas, cfg.eps, cfg.weight_decay)
    amp = autocast_dtype(cfg, device, enc_cfg.hidden_size)
    meta = {**ident, "feature": feature.to_dict(), "skipped_audio": skipped, "provenance": provenance(device),
            "train_utterances": len(train_idx), "val_utterances": len(feats) - len(train_idx),
            "val_baselines": validation_baselines(val_batches) if val_batches else None,
            "precision": "float32" if amp is None else str(amp).removeprefix("torch.")}
    if ranks.active:  # the last sitting's; a resume may use another number of ranks
        meta["world_size"] = ranks.world
    run = Run(spec, out_dir, cfg, device, feature, model, opt, feats, train_idx, val_batches,
              BucketBatcher([feats[i].shape[0] for i in train_idx], cfg.batch_size, cfg.seed),
              torch.Generator().manual_seed(cfg.seed + 2), amp, meta, ranks=ranks)
    if has_ckpt:
        _, run.progress = load_training_checkpoint(out_dir, model, opt)
        torch.set_rng_state(run.progress.rng["torch"])
        if device.type == "cuda" and "cuda" in run.progress.rng:
            torch.cuda.set_rng_state(run.progress.rng["cuda"], device)
        run.data_g.set_state(run.progress.rng["data"])
        run.rows = _read_log(out_dir / LOG_FILE, run.progress.step)  # rows past the checkpoint are redone
        log.info("resuming %s from step %d", out_dir, run.progress.step)
    if ranks.active:
        run.ddp = distributed.wrap(model, device)
    run.compile = resolve_compile(compile, device, ranks.active)
    run.forward = compiled(run.net, run.compile)
    run.meta["compile"] = run.compile  # how it ran, not what it is: not part of the identity a resume checks
    snapshot_rng(run)
    return run


def snapshot_rng(run: Run) -> None:
    """Record the RNG states at a step boundary (what a resume restores; dropout on a GPU has its own)."""
    run.progress.rng = {"torch": torch.get_rng_state(), "data": run.data_g.get_state()}
    if run.device.type == "cuda":
        run.progress.rng["cuda"] = torch.cuda.get_rng_state(run.device)


def train_step(run: Run) -> tuple[float, int]:
    """One optimiser step over `accumulation` micro-batches; returns (loss, 10-ms frames seen).

    Batches are global: with several ranks each computes its share (`distributed.local_share`), and the loss
    returned is this rank's part of the batch's mean (the parts add up over ranks to the one-process loss).
    """
    cfg, p = run.cfg, run.progress
    lr = lr_at(p.step, cfg.steps, cfg.lr, cfg.warmup)
    for group in run.opt.param_groups:
        group["lr"] = lr
    if run.ranks.active:  # dropout: independent across ranks, the same again on a resume with as many ranks
        torch.manual_seed(distributed.dropout_seed(cfg.seed, p.step, run.ranks.rank))
    step_loss, step_frames = 0.0, 0
    epoch, pos = p.epoch, p.batch_in_epoch  # committed only when the step completes
    batches = run.batcher.epoch(epoch)
    for micro in range(cfg.accumulation):
        if pos >= len(batches):
            epoch, pos = epoch + 1, 0
            batches = run.batcher.epoch(epoch)
        x, lengths = crop_batch(run.feats, [run.train_idx[j] for j in batches[pos]], cfg.crop_frames, run.data_g)
        pos += 1
        inp, mask = _masks(cfg, x, lengths, run.data_g)
        step_frames += int(lengths.sum()) * run.feature.downsample
        weight = 1.0  # this rank's share of the batch's mean loss, times the number of ranks
        if run.ranks.active:
            (x, lengths, inp, mask), weight = distributed.local_share((x, lengths, inp, mask), run.ranks)
        if run.step_frames is not None:
            x, inp, mask = (pad_frames(t, run.step_frames) for t in (x, inp, mask))
        x, inp, lengths, mask = (t.to(run.device) for t in (x, inp, lengths, mask))
        with distributed.no_sync(run.net, sync=micro == cfg.accumulation - 1):
            with torch.autocast(run.device.type, dtype=run.amp or torch.bfloat16, enabled=run.amp is not None):
                pred = run.forward(inp, lengths)
            # x 1.0 is exact: one process computes what it always did
            loss = reconstruction_l1(pred, x, mask, lengths, cfg.unmasked_weight) * weight
            (loss / cfg.accumulation).backward()
        step_loss += loss.item() / cfg.accumulation / run.ranks.world
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip)
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    p.step, p.frames, p.epoch, p.batch_in_epoch = p.step + 1, p.frames + step_frames, epoch, pos
    snapshot_rng(run)
    return step_loss, step_frames


def evaluate(run: Run) -> float | None:
    if not run.val_batches:
        return None
    run.progress.val_loss = validation_loss(run.model, run.val_batches, run.device, run.ranks)
    return run.progress.val_loss


def log_row(run: Run, train_loss: float | None, val: float | None) -> None:
    p, (frames, secs) = run.progress, run.window
    run.rows.append({"step": p.step, "epoch": p.epoch,
                     "lr": "0" if p.step == 0 else f"{lr_at(p.step - 1, run.cfg.steps, run.cfg.lr, run.cfg.warmup):.3e}",
                     "train_loss": None if train_loss is None else f"{train_loss:.5f}",
                     "val_loss": None if val is None else f"{val:.5f}", "frames": p.frames,
                     "frames_per_s": f"{frames / secs:.1f}" if secs else None,
                     "seconds": f"{p.seconds:.2f}", "cpu_seconds": f"{p.cpu_seconds:.2f}"})
    run.window = [0, 0.0]


def save(run: Run) -> None:
    """Checkpoint and loss log, atomically, by rank 0 alone (the ranks' weights are the same after each step)."""
    if not run.ranks.main:
        return
    meta = {**run.meta, "complete": run.progress.step >= run.cfg.steps}
    save_training_checkpoint(run.out_dir, run.model, run.opt, run.progress, meta)
    _write_log(run.out_dir / LOG_FILE, run.rows)


def stop_reason(run: Run, val: float | None, until_yardstick: bool, max_cpu_seconds: float | None) -> str | None:
    """Why the run stops early, if it does: it beat the interpolation yardstick, or it spent its CPU allowance."""
    base = run.meta["val_baselines"]
    if until_yardstick and val is not None and base and val < base["interpolate"]:
        return f"held-out masked L1 {val:.4f} < interpolation {base['interpolate']:.4f}"
    if max_cpu_seconds is not None and run.progress.cpu_seconds >= max_cpu_seconds:
        return f"CPU allowance of {max_cpu_seconds:.0f} s spent"
    return None


def run_pretraining(spec: str, corpus_root_or_audio: "str | Path | Corpus", out_dir: Path, cfg: PretrainConfig,
                    resume: bool = False, *, stop_at_step: int | None = None, until_yardstick: bool = False,
                    max_cpu_seconds: float | None = None, device: torch.device | str | None = None,
                    encoder: EncoderConfig | None = None, show_progress: bool = True, compile: str = "auto") -> Path:
    """Pretrain `spec` (e.g. "mockingjay:small") on a corpus's pretrain split or audio files; return the checkpoint dir.

    `resume` continues the checkpoint in `out_dir` (model, optimizer, schedule, RNG and data position).
    `stop_at_step` stops after that step with a checkpoint, as an interruption would (time-sliced runs);
    `until_yardstick` stops after the first evaluation below the interpolation yardstick and `max_cpu_seconds`
    once the training loop has used that much CPU time (recipe studies). None of them changes the schedule.
    `encoder` replaces the preset's encoder config (its input_dim follows the features). `compile` picks how steps
    run (pretrain.model.COMPILE_CHOICES; "auto": pretrain.model.AUTO_COMPILE_ON_CUDA on one GPU, eager elsewhere);
    it changes rounding, not the model, so a run may resume with another.

    Inside an initialised process group of several ranks (torchrun, `python -m pretrain`) every rank calls this with
    the same arguments and its own device: `cfg.batch_size` is then the global batch, shared out between the ranks.
    """
    out_dir = Path(out_dir)
    device = torch.device(device) if device is not None else default_device()
    show_progress = show_progress and distributed.current().main
    run = start_run(spec, corpus_root_or_audio, out_dir, cfg, resume, device, encoder, show_progress, compile)
    p = run.progress
    if p.step >= cfg.steps:
        return out_dir
    last = min(cfg.steps, stop_at_step) if stop_at_step is not None else cfg.steps
    if p.step == 0 and not run.rows and run.val_batches:  # the curve's starting point
        log_row(run, None, evaluate(run))
    if run.meta["val_baselines"] and run.ranks.main:
        log.info("held-out masked L1 of trivial predictors: corpus mean %.4f, linear interpolation %.4f",
                 run.meta["val_baselines"]["mean"], run.meta["val_baselines"]["interpolate"])
    run.model.train()
    bar = tqdm(total=cfg.steps, initial=p.step, desc=f"pretrain {spec}", unit="step", disable=not show_progress)
    # the same command trains the same bits (core.repro); each step's freed activations serve the next (core.allocator)
    with deterministic_kernels(run.device), reuse_freed_blocks():
        try:
            while p.step < last:
                wall, cpu = time.perf_counter(), time.process_time()
                loss, frames = train_step(run)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu  # evaluation and saving not counted
                if run.ranks.active:  # the batch's loss, and the CPU time of all ranks (the same on each: same stops)
                    loss, cpu = distributed.all_sum([loss, cpu], run.device)
                p.seconds, p.cpu_seconds = p.seconds + wall, p.cpu_seconds + cpu
                run.window = [run.window[0] + frames, run.window[1] + wall]
                val = evaluate(run) if p.step % cfg.eval_interval == 0 or p.step == cfg.steps else None
                reason = stop_reason(run, val, until_yardstick, max_cpu_seconds)
                if p.step % cfg.log_interval == 0 or val is not None or p.step == last or reason:
                    bar.set_postfix(loss=f"{loss:.4f}", val="-" if p.val_loss is None else f"{p.val_loss:.4f}",
                                    fps=f"{run.window[0] / max(run.window[1], 1e-9):.0f}")
                    log_row(run, loss, val)
                bar.update(1)
                if p.step % cfg.ckpt_interval == 0 or p.step == last:
                    save(run)
                if reason:
                    run.meta["stopped"] = reason  # recorded in the checkpoint; a resumed run clears it
                    save(run)
                    if run.ranks.main:
                        log.info("%s: stopping at step %d: %s", out_dir, p.step, reason)
                    break
        except KeyboardInterrupt:
            if run.ranks.main:
                log.warning("interrupted: saving step %d to %s (continue with --resume)", p.step, out_dir)
            save(run)
            raise
        finally:
            bar.close()
    base = run.meta["val_baselines"]
    if run.ranks.main and p.step >= cfg.steps and base and p.val_loss is not None and p.val_loss > base["interpolate"]:
        log.warning("%s: held-out masked L1 %.4f is still above linear interpolation between unmasked neighbours "
                    "(%.4f): the model has not learned to use local context; train longer", out_dir,
                    p.val_loss, base["interpolate"])
    return out_dir


def ensure_pretrained(spec: str, corpus: Corpus, out_dir: Path, cfg: PretrainConfig, *,
                      encoder: EncoderConfig | None = None, device: torch.device | str | None = None,
                      show_progress: bool = True) -> Path:
    """Reuse a complete matching checkpoint in `out_dir`, resume an incomplete matching one, else train.

    A checkpoint trained with another config/corpus is moved aside (`<out_dir>.replaced-<time>`), never deleted
    (by rank 0, once every rank has decided, when several ranks call this).
    """
    out_dir = Path(out_dir)
    ranks = distributed.current()
    if (out_dir / META_FILE).is_file():
        meta = read_meta(out_dir)
        bad = _mismatch(meta, run_identity(spec, resolve_source(corpus), cfg, encoder))
        if not bad:
            if meta.get("complete"):
                return out_dir
            return run_pretraining(spec, corpus, out_dir, cfg, resume=True, encoder=encoder, device=device,
                                   show_progress=show_progress)
        aside = out_dir.with_name(f"{out_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        distributed.barrier(ranks)
        if ranks.main:
            log.warning("checkpoint %s differs in %s: moving it to %s and retraining", out_dir, ", ".join(bad), aside)
            shutil.move(str(out_dir), str(aside))
        distributed.barrier(ranks)
    return run_pretraining(spec, corpus, out_dir, cfg, encoder=encoder, device=device, show_progress=show_progress)
