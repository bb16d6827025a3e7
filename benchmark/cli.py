"""The command line of run_benchmark.py: parse and validate, then --list, --dry-run, run or report.

Every input is checked while planning, before any corpus is built or model loaded: names, numbers, layer
choices against each upstream's hidden states, the corpus (prepared, readable, and able to serve every task asked
for: TaskSpec.check) and each --ckpt (files, hashes, weights against config). An input error, then or later (a corrupt audio file, checkpoint or corpus met while
running), is one `run_benchmark.py: error: ...` line naming the flag or file, and exit status 2; any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch

from downstream.modes import MODE_CHOICES, parse_modes
from downstream.tasks import ALL_TASKS
from benchmark.inputs.corpus import check_corpus, corpus_choices, resolve_corpus
from benchmark.inputs.upstream import num_hidden_states_of, planned_checkpoint
from benchmark.plan.cachesize import check_space_for
from benchmark.plan.config import DEFAULT_MODES, DEFAULT_UPSTREAMS, BenchmarkConfig
from benchmark.plan.dryrun import print_plan
from benchmark.plan.presets import MAIN_SEEDS, MAIN_TASKS, full_job, main_job, quick_job
from benchmark.plan.runs import check_layer_modes, check_tasks, parse_fractions
from benchmark.plan.shards import shard_config
from benchmark.record.results import RUNS_FILE, merge_shards, read_rows, results_root, rows_files, write_leaderboard
from benchmark.run.prepare import check_prepared, prepare
from benchmark.run.runner import build_report_if_available, run_benchmark
from core.allocator import map_large_blocks
from core.audio import AudioError
from core.io import read_text
from corpora.validate import CorpusError
from upstream.checkpoint import CheckpointError
from upstream.reference import reference_for, verify_reference
from upstream.registry import FAMILIES, check_ckpt, parse_spec, upstream_names

PROG = "run_benchmark.py"
# input problems found while running (a file read for the first time): reported like planning errors
RUNTIME_INPUT_ERRORS = (AudioError, CheckpointError, CorpusError)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=(
        "Probe speech representations (mel, Mockingjay, AALBERT, random-init controls) on phone and speaker "
        "tasks. With no arguments: the default benchmark end to end on the built-in corpus."))
    p.add_argument("command", nargs="?", default="run", choices=("run", "report", "certify", "prepare"),
                   help="run (default): train the planned probes; report: merge the shards' rows into "
                        "results/runs.csv and rebuild results/REPORT.md from the rows; "
                        "certify: fit converged logistic-regression references for the linear probes' rows "
                        "(results/convergence.csv), then rebuild the report; prepare: build what the shards of a "
                        "sweep share (corpus, checkpoints, statistics, feature caches) once, before them")
    p.add_argument("--upstream", help=f"comma list of upstreams[:preset] (default: {','.join(DEFAULT_UPSTREAMS)})")
    p.add_argument("--task", help=f"comma list of tasks, of {','.join(ALL_TASKS)} (default: {','.join(MAIN_TASKS)})")
    p.add_argument("--mode", help=f"comma list of {', '.join(MODE_CHOICES)} (default: {DEFAULT_MODES}; "
                                  "'layers' = every hidden state as layer=K)")
    p.add_argument("--fractions", help="comma list of label fractions in (0, 1] (default: the smallest and the largest of "
                                       "the papers' 0.001,0.005,0.01,0.05,0.125,1 that the corpus is large enough for; "
                                       "with --full, every one of them)")
    p.add_argument("--seeds", type=int, help=f"seeds per configuration (default {MAIN_SEEDS}; 3 with --full)")
    p.add_argument("--corpus", help="corpus name or prepared corpus directory (default: synth)")
    p.add_argument("--ckpt", action="append", default=[], metavar="NAME=PATH",
                   help="weights of an upstream: a checkpoint directory (aalbert=runs/pretrain/aalbert-small), "
                        "torchaudio's .pth state dict (wav2vec2_base=wav2vec2_fairseq_base_ls960.pth) or an s3prl "
                        ".ckpt (s3prl:mockingjay=states-1000000.ckpt)")
    p.add_argument("--pretrain", action="store_true",
                   help="pretrain mockingjay/aalbert from scratch inside the job (into --runs-dir, the main job's recipe "
                        "and budget) instead of using the reference checkpoints that ship in checkpoints/")
    p.add_argument("--steps", type=int, help="a FIXED number of frozen-probe training steps instead of training until dev "
                                            "stops improving (fast and approximate; rows say budget steps=N)")
    p.add_argument("--finetune-steps", type=int, help="a fixed number of fine-tuning steps (default: until dev stops "
                                                     "improving)")
    p.add_argument("--no-finetune", action="store_true", help="skip --full's fine-tuning runs at the largest fraction")
    p.add_argument("--full", action="store_true",
                   help="the full benchmark: every default label fraction, 3 seeds and fine-tuning (the rows results/ "
                        "ships; about 15-23 min on 2 cores) instead of the main job's two ends of the data-size ablation "
                        f"x {MAIN_SEEDS} seeds")
    p.add_argument("--quick", action="store_true", help="reduced benchmark (small corpus, short budgets, < 5 min)")
    p.add_argument("--force", action="store_true", help="re-run configurations already in results/runs.csv")
    p.add_argument("--list", action="store_true", help="list upstreams, presets, tasks, modes and corpora, then exit")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its size, train nothing")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--cache-dir", type=Path, default=Path("cache/features"),
                   help="the feature cache: the hidden states the planned modes read, float16 (docs/scale.md)")
    p.add_argument("--no-cache", action="store_true",
                   help="extract each upstream's hidden states straight into memory and write nothing under "
                        "--cache-dir: the same rows, but every invocation extracts again (the 4.7 min of the main "
                        "job's extraction each time) and the float16 features stay in memory beside the probes' "
                        "float32 copy")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/pretrain"))
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--workers", type=int, help="groups of frozen probes trained at once, in threads (default 2); with certify, "
                        "upstream checkpoints certified at once")
    p.add_argument("--probe-memory", type=float, metavar="GB",
                   help="memory one group of frozen probes may hold resident (default: 0.54 GB (512 MiB) of host memory, or half "
                        "the free GPU memory on CUDA); larger groups stream from the feature cache, with the same "
                        "rows (docs/scale.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--shard", metavar="I/N", help="run shard I (0-based) of N of the plan, balanced by expected cost; "
                                               "rows go to RESULTS_DIR/shards/I-of-N/runs.csv and `report` merges "
                                               "them; run `prepare` first (docs/scale.md)")
    return p


def _names(text: str, valid: list[str], what: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not items:
        raise ValueError(f"--{what} is empty; valid: {', '.join(valid)}")
    for t in items:
        if t not in valid:
            raise ValueError(f"--{what}: unknown {what} {t!r}; valid: {', '.join(valid)}")
    return items


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    """Validated BenchmarkConfig; ValueError with the valid choices for any bad name or value."""
    if args.quick and args.full:
        raise ValueError("--quick and --full are two different plans: give one")
    cfg = quick_job() if args.quick else full_job() if args.full else main_job()
    kw: dict = {"data_dir": args.data_dir, "results_dir": args.results_dir, "cache_dir": args.cache_dir,
                "runs_dir": args.runs_dir, "progress": not args.no_progress, "force": args.force,
                "pretrain": args.pretrain, "use_cache": not args.no_cache}
    if args.no_cache and args.command in ("prepare", "certify"):
        does = {"prepare": "builds the feature caches the shards read",
                "certify": "reads the feature cache the rows were trained on"}[args.command]
        raise ValueError(f"--no-cache: `run_benchmark.py {args.command}` {does}; drop --no-cache")
    if args.device is not None:
        try:
            dev = torch.device(args.device)
        except RuntimeError as e:
            raise ValueError(f"--device {args.device!r} is not a torch device (cpu, cuda, cuda:1, ...): {e}") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: CUDA is not available on this machine (use cpu)")
        kw["device"] = str(dev)
    if args.upstream:
        specs = tuple(dict.fromkeys(t.strip() for t in args.upstream.split(",") if t.strip()))
        if not specs:
            raise ValueError(f"--upstream is empty; valid: {', '.join(upstream_names())}")
        for s in specs:
            try:
                parse_spec(s)
            except ValueError as e:  # lists the valid names / presets
                raise ValueError(f"--upstream {s}: {e}") from None
        kw["upstreams"] = specs
    if args.task:
        kw["tasks"] = _names(args.task, list(ALL_TASKS), "task")
    if args.mode:
        try:
            parse_modes(args.mode, num_hidden_states=1 if "layers" in args.mode else None)  # syntax check
        except ValueError as e:
            raise ValueError(str(e) if str(e).startswith("--mode") else f"--mode: {e}") from None
        kw["modes"] = args.mode
        kw["task_modes"] = {}  # --mode applies to every task
    if args.fractions:
        kw["fractions"] = parse_fractions(args.fractions)
        kw["task_fractions"] = {}  # --fractions applies to every task
    if args.seeds is not None:
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
        kw["seeds"] = args.seeds
        kw["task_seeds"] = {}  # --seeds applies to every task
    if args.corpus:
        kw["corpus"] = args.corpus
        kw["task_corpora"] = {}  # --corpus applies to every task
    ckpts = {}
    for item in (c for arg in args.ckpt for c in arg.split(",") if c):
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--ckpt {item!r}: expected NAME=PATH, e.g. aalbert=runs/pretrain/aalbert-small")
        ckpts[name] = path  # checked by check_inputs (upstream.registry.check_ckpt)
    kw["ckpts"] = ckpts
    for flag, v in (("--steps", args.steps), ("--finetune-steps", args.finetune_steps)):
        if v is not None and v < 1:
            raise ValueError(f"{flag} must be >= 1, got {v}")
    if args.steps is not None:
        kw["probe"] = cfg.probe.with_steps(args.steps)
        kw["task_probes"] = {t: p.with_steps(args.steps) for t, p in cfg.task_probes.items()}
    if args.finetune_steps is not None:
        kw["finetune_probe"] = cfg.finetune_probe.with_steps(args.finetune_steps)
    if args.workers is not None:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        kw["probe_workers"] = args.workers
    if args.no_finetune:
        kw["finetune_ends"] = False
    if args.probe_memory is not None:
        if not args.probe_memory >= 0:
            raise ValueError(f"--probe-memory must be >= 0 (GB), got {args.probe_memory}")
        kw["probe_memory"] = int(args.probe_memory * 1e9)
    cfg = replace(cfg, **kw)
    if args.shard is not None:
        cfg = shard_config(cfg, args.shard, args.command)
    check_inputs(cfg)
    if args.command in ("run", "prepare"):
        cfg = servable_tasks(cfg, asked=bool(args.task))
    return cfg


def servable_tasks(cfg: BenchmarkConfig, asked: bool) -> BenchmarkConfig:
    """TaskSpec.check of every planned task on the corpus, while planning (before anything is built or written). A
    task asked for with --task that the corpus cannot serve (no phone transcriptions, no trial speakers, open-set
    speakers) is a ValueError naming the task and the file; a default task is left out with a note (the main job
    on LibriSpeech has no trial speakers for speaker verification). The built-in corpus, still to be built, holds
    what every task needs. Each task is checked on its own corpus (BenchmarkConfig.corpus_of)."""
    kept = []
    for part in cfg.by_corpus():
        corpus = resolve_corpus(part.corpus, part.data_dir, part.quick, prepare=False)
        if corpus is None:
            kept += part.tasks
            continue
        if asked:
            check_tasks(part.tasks, corpus)
            kept += part.tasks
            continue
        for t in part.tasks:
            try:
                check_tasks([t], corpus)
                kept.append(t)
            except ValueError as e:
                print(f"note: default task {t} left out: {str(e).removeprefix(f'task {t}: ')}")
    if not kept:
        raise ValueError(f"--corpus {cfg.corpus}: serves none of the default tasks ({', '.join(cfg.tasks)}); "
                         f"choose tasks with --task, of {','.join(ALL_TASKS)}")
    return replace(cfg, tasks=tuple(t for t in cfg.tasks if t in kept))


def check_inputs(cfg: BenchmarkConfig) -> None:
    """What can be checked before anything is built or loaded: the corpus, each --ckpt, the layer choices (the tasks:
    `servable_tasks`)."""
    for part in cfg.by_corpus():
        check_corpus(part.corpus, cfg.data_dir, cfg.quick)
    check_results(Path(cfg.results_dir))
    for name, path in cfg.ckpts.items():
        check_ckpt(name, Path(path))
    planned = {spec: planned_checkpoint(spec, cfg.ckpts, cfg.runs_dir, cfg.quick, cfg.pretrain) for spec in cfg.upstreams}
    for spec in cfg.upstreams:  # the shipped references are checked against their pinned hashes before any work
        name, preset = parse_spec(spec)
        if (ref := reference_for(name, preset)) is not None and planned[spec] == ref.path:
            verify_reference(ref)
    if "layer=" in cfg.modes:
        check_layer_modes(cfg.modes, {spec: num_hidden_states_of(spec, planned[spec]) for spec in cfg.upstreams})


def check_results(results_dir: Path) -> None:
    """Existing rows files must be this toolkit's (rows are appended to them and skipped by run id): runs.csv and,
    for a shard, every shard's of the same results folder."""
    for runs in rows_files(results_root(results_dir)):
        read_text(runs, "results file")  # names line and byte of a non-UTF-8 file
        read_rows(runs)  # names the file when its header is another version's


def print_list() -> None:
    print("upstreams (name:preset, default preset first):")
    for name, fam in FAMILIES.items():
        presets = [fam.default_preset, *(p for p in fam.presets if p != fam.default_preset)]
        print(f"  {name:20s} presets: {', '.join(presets)}   ({fam.description})")
    print("tasks:")
    for t in ALL_TASKS.values():
        print(f"  {t.name:20s} {t.labels.name} labels, {t.level}-level, {t.description}, {t.metric} "
              f"({t.metric.direction} is better)"
              + (" (+ utterance accuracy)" if t.utt_metric else ""))
    print(f"modes: {', '.join(MODE_CHOICES)}")
    print(f"corpora: {', '.join(corpus_choices()) or '(none installed)'} (or a prepared corpus directory)")


def fail(message: str) -> int:
    """One line naming the culprit on stderr (a corpus with several problems lists them on the lines after it);
    exit status 2, as argparse's own errors."""
    first, *rest = message.splitlines() or [""]
    print(f"{PROG}: error: {first}", *rest, sep="\n", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    map_large_blocks()  # large freed blocks go back to the OS; the heap keeps them while probes train (core.allocator)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print_list()
        return 0
    try:
        cfg = config_from_args(args)
    except ValueError as e:  # every bad name, number, file or flag found while planning
        return fail(str(e))
    try:
        return run_command(args, cfg, argv)
    except RUNTIME_INPUT_ERRORS as e:
        hint = (" (prepared with --no-verify-audio? `python -m corpora prepare` decodes every file by default and "
                "lists all such files at once)" if isinstance(e, AudioError) else "")
        first, *rest = str(e).splitlines() or [type(e).__name__]
        return fail("\n".join([first + hint, *rest]))


def run_command(args: argparse.Namespace, cfg: BenchmarkConfig, argv: list[str] | None) -> int:
    if args.command == "report":
        try:
            merged = merge_shards(cfg.results_dir)
        except ValueError as e:  # one run id with two different results
            return fail(str(e))
        if merged is not None:
            print(f"merged the shards' rows into {cfg.results_dir}/runs.csv: {merged[0]} added, {merged[1]} "
                  f"duplicates dropped")
        write_leaderboard(cfg.results_dir)
        return 0 if build_report_if_available(cfg.results_dir) else 1
    if args.command == "certify":
        # pandas loads here (0.4 s on top of this module's imports): --list, --dry-run and prepare never need it
        from benchmark.report.convergence import certifiable_rows, certify, exempt_tasks, summary_markdown
        from benchmark.record.aggregate import read_runs  # pandas too: loaded for certify only, as the line above

        built = []  # the plan's corpora that are built: the rows of each are certified from one queue of fits
        for part in cfg.by_corpus():  # the main corpus, then a task's own (the main job's keyword corpus)
            corpus = resolve_corpus(part.corpus, cfg.data_dir, cfg.quick, prepare=False)
            if corpus is None:
                if part.corpus != cfg.corpus:
                    continue  # another corpus of the plan, not built yet: no rows to certify
                return fail(f"--corpus {cfg.corpus}: not prepared under {cfg.data_dir}; certify reads the corpus and "
                            f"the feature cache the rows were trained on")
            built.append((corpus, part.corpus == cfg.corpus))
        try:
            runs = read_runs(Path(cfg.results_dir) / RUNS_FILE)
            held = set(certifiable_rows(runs)["corpus"])
            # another corpus of the plan with no rows to certify (yet) is left out
            corpora = [c for c, main_corpus in built if main_corpus or c.name in held]
            table = None if not corpora else certify(cfg.results_dir, corpora, cfg.cache_dir, progress=cfg.progress,
                            workers=cfg.probe_workers, device=cfg.device,
                            # a bar on a terminal; one flushed line per row in a log on disk (--no-progress)
                            log=(lambda m: None) if cfg.progress else (lambda m: print(m, flush=True)))
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for corpus in corpora:  # none when no corpus of the plan has rows (and certify did not run)
            mine = runs[runs["corpus"] == corpus.name]
            print(f"corpus {corpus.name}: "
                  f"{summary_markdown(table[table['run_id'].isin(mine['run_id'])], exempt_tasks(mine['task']))}")
        return 0 if build_report_if_available(cfg.results_dir) else 1
    if args.dry_run:
        print_plan(cfg)
        return 0
    try:
        if cfg.shard is not None:
            check_prepared(cfg)
        if cfg.use_cache:
            check_space_for(cfg)  # before anything is extracted
    except ValueError as e:
        return fail(str(e))
    if args.command == "prepare":
        prepare(cfg)
        return 0
    run_benchmark(replace(cfg, command=" ".join(["python run_benchmark.py", *(shlex.quote(a) for a in
                                                                           (sys.argv[1:] if argv is None else argv))])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
