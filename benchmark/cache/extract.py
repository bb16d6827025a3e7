"""The feature cache: each frozen upstream's hidden states extracted ONCE per split to disk, then reused.

Keyed by (upstream, preset, checkpoint content hash, what else determines its outputs (Upstream.cache_fields: the
feature config of a log-mel front-end, or a model config and frame rule), corpus split manifest, format version).
One directory per key under `cache/features/<key>/`:
  hidden.npy   float16 (len(layers), total_frames, D): hidden state layers[j] of utterance i at
               [j, offsets[i]:offsets[i+1]]
  offsets.npy  int64 (n_utts + 1,)
  meta.json    the key fields, the hidden-state indices stored ("layers"), shapes and a sampled checksum
  DONE         written LAST; without it the directory is never used.
An entry stores the hidden states the planned modes read (benchmark.plan.runs.cache_layers): all of them for
weighted_sum, one for last or layer=K. An entry of all hidden states has the key (and directory name) it had before
entries could hold fewer; one of a subset has the indices in its key. A request is served by any complete entry that
holds a superset of what it needs; with none, the union of what is needed and what the model's other entries hold
is extracted into a new entry, which from then on serves all of them (the older ones are left in place, never
deleted under a process that may be reading them, and are no longer read: docs/scale.md).
Everything is built in a temporary sibling directory that is renamed into place, so a killed extraction
leaves nothing that looks finished. Extraction streams batches to the file with positioned writes
(no memory map while writing), so peak memory is one batch of hidden states, not the split.

Several processes may share one cache (the shards of a sweep, on one machine or on shared storage): a build
holds an exclusive lock (fcntl.flock on `.locks/<key>.lock`), so a second process wanting the same entry waits
and then reuses it. Correctness does not rest on the lock (some network filesystems have none, or node-local
ones): staging folders are unique per host and process, and when the final rename finds the entry already
there (another builder finished first), the finished entry is used and this copy dropped, so every process
reads the one entry in place.

This module writes entries; finding, validating and opening them is benchmark.cache.reader's, the one reader the
runner, the disk-space check, the certificate and the perf scripts share.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.cache.reader import (CACHE_FORMAT_VERSION, DONE, CacheEntry, EntryQuery, entry_problem, find_entries,
                                    key_layers, manifest_digest, sampled_checksum)
from core.allocator import reuse_freed_blocks
from core.audio import load_audio
from core.io import atomic_write_json, sha256_json
from core.parallel import run_parallel, workers_for
from core.repro import UPSTREAM_THREADS, torch_threads
from corpora.manifest import Corpus, Utterance
from downstream.sources import SplitArrays, frame_counts
from upstream.interface import Upstream

LOCKS = ".locks"  # one empty lock file per key, kept (deleting a lock file others may hold is a classic race)
_F16_MAX = float(np.finfo(np.float16).max)
# batches extracted side by side on a CPU, each on UPSTREAM_THREADS torch threads; None: as many as the cores hold
EXTRACT_WORKERS: int | None = None


def layer_set(layers: Sequence[int] | None, num_hidden_states: int) -> tuple[int, ...]:
    """Sorted distinct hidden-state indices (None: all of them); ValueError for an empty set or an index outside."""
    out = tuple(range(num_hidden_states)) if layers is None else tuple(sorted(set(int(k) for k in layers)))
    if not out or not 0 <= out[0] <= out[-1] < num_hidden_states:
        raise ValueError(f"feature cache: hidden states {list(out)} requested of an upstream with {num_hidden_states} "
                         f"(0..{num_hidden_states - 1})")
    return out


def cache_key(identity: dict[str, str], upstream: Upstream, corpus: Corpus, split: str,
              utts: list[Utterance], layers: Sequence[int] | None = None) -> tuple[str, dict[str, Any]]:
    """(directory name, key fields): everything that changes the stored hidden states is in the key. `layers` (the
    hidden-state indices to store; None: all) enters the key only for a subset, so an all-layers entry keeps the key
    it had before subsets existed."""
    fields = {"format": CACHE_FORMAT_VERSION, "upstream": identity["upstream"], "preset": identity["preset"],
              "ckpt_hash": identity["ckpt_hash"], **upstream.cache_fields(),
              "num_hidden_states": upstream.num_hidden_states, "hidden_size": upstream.hidden_size,
              "corpus": corpus.name, "split": split, "manifest": manifest_digest(utts)}
    held = layer_set(layers, upstream.num_hidden_states)
    if len(held) < upstream.num_hidden_states:
        fields["layers"] = list(held)
    return f"{identity['upstream']}-{corpus.name}-{split}-{sha256_json(fields)[:16]}", fields


def expected_lengths(upstream: Upstream, utts: list[Utterance]) -> np.ndarray:
    return frame_counts(upstream.frame_rule, utts)


def _stream(upstream: Upstream, corpus: Corpus, utts: list[Utterance], layers: tuple[int, ...],
            write: Callable[[int, int, np.ndarray], None], batch_seconds: float, progress: bool,
            device: torch.device | str, desc: str, workers: int | None = None) -> np.ndarray:
    """Run `utts` through `upstream` in batches (longest first) and hand each utterance's hidden state layers[j] to
    write(j, first frame row, float16 (n, D) array); return the offsets. The one path to float16 for the cache and
    for --no-cache, so both give the same bits.

    On a CPU every batch runs on core.repro.UPSTREAM_THREADS torch threads, so the features' bits do not depend on
    the machine's core count; `workers` batches run side by side (None: as many as the cores hold, one on 2 cores).
    A batch's features do not depend on the worker it ran on or the order batches finish: `write` puts each at its
    own rows. On a GPU the batches run one after another."""
    lengths = expected_lengths(upstream, utts)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    upstream.eval().to(device)
    order = np.argsort(-np.array([u.num_samples / u.sample_rate for u in utts]), kind="stable")  # long first: OOM early
    batches, cur, cur_s = [], [], 0.0
    for i in order.tolist():
        dur = utts[i].duration
        if cur and (len(cur) + 1) * max(cur_s, dur) > batch_seconds:  # padded seconds in the batch
            batches.append(cur)
            cur, cur_s = [], 0.0
        cur.append(i)
        cur_s = max(cur_s, dur)
    if cur:
        batches.append(cur)
    batch_seconds_list = [sum(utts[i].duration for i in b) for b in batches]
    total = 0.0
    for x in batch_seconds_list:  # summed exactly as the updates are, so the bar never passes its total
        total += x
    bar = _bar(total, progress, desc)
    cpu = torch.device(device).type == "cpu"
    if workers is None:
        workers = (EXTRACT_WORKERS or workers_for(UPSTREAM_THREADS)) if cpu else 1
    lock = threading.Lock()

    @torch.no_grad()  # per thread in torch: inside the worker
    def one(batch: list[int], seconds: float) -> None:
        wavs = [load_audio(corpus.audio_path(utts[i]), upstream.sample_rate) for i in batch]
        wav_len = torch.tensor([len(w) for w in wavs])
        padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True).to(device)
        hidden, out_len = upstream(padded, wav_len.to(device))
        for b, i in enumerate(batch):
            n = int(out_len[b])
            if n != lengths[i]:
                raise ValueError(f"feature cache: utterance {utts[i].id} gave {n} frames, manifest length "
                                 f"{utts[i].num_samples} samples implies {lengths[i]}: fix the manifest")
            for j, layer in enumerate(layers):
                x = hidden[layer][b, :n].float().clamp_(-_F16_MAX, _F16_MAX).cpu().numpy().astype(np.float16)
                write(j, int(offsets[i]), x)
        if bar is not None:
            with lock:
                bar.update(seconds)
    try:  # each batch's freed activations are reused by the next (core.allocator)
        with torch_threads(UPSTREAM_THREADS) if cpu else contextlib.nullcontext(), reuse_freed_blocks():
            run_parallel(one, list(zip(batches, batch_seconds_list)), min(workers, len(batches)), "extract")
    finally:
        if bar is not None:
            bar.close()
    return offsets


def extract_split(upstream: Upstream, corpus: Corpus, utts: list[Utterance], out_dir: Path, fields: dict[str, Any],
                  batch_seconds: float = 64.0, progress: bool = True, device: torch.device | str = "cpu") -> None:
    """Stream `utts` through `upstream` into out_dir/hidden.npy (float16, the hidden states key_layers(fields)) +
    offsets, then meta and DONE last."""
    layers = key_layers(fields)
    lengths = expected_lengths(upstream, utts)
    L, N, D = len(layers), int(lengths.sum()), upstream.hidden_size
    out_dir.mkdir(parents=True, exist_ok=True)
    hidden_path = out_dir / "hidden.npy"
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False, "shape": (L, N, D)}
    with open(hidden_path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        data_start = f.tell()
        f.truncate(data_start + L * N * D * 2)
    fd = os.open(hidden_path, os.O_WRONLY)
    try:
        offsets = _stream(upstream, corpus, utts, layers,
                          lambda j, row, x: os.pwrite(fd, x.tobytes(), data_start + (j * N + row) * D * 2),
                          batch_seconds, progress, device, f"extract {fields['upstream']}/{fields['split']}")
        os.fsync(fd)
    finally:
        os.close(fd)
    np.save(out_dir / "offsets.npy", offsets)
    atomic_write_json(out_dir / "meta.json", {"key": fields, "layers": list(layers), "shape": [L, N, D],
                                              "utt_ids": [u.id for u in utts], "offsets_list": offsets.tolist()})
    atomic_write_json(out_dir / DONE, {"hidden_bytes": hidden_path.stat().st_size,
                                       "hidden_checksum": sampled_checksum(hidden_path)})


def extract_arrays(upstream: Upstream, corpus: Corpus, utts: list[Utterance], layers: Sequence[int] | None = None,
                   batch_seconds: float = 64.0, progress: bool = True, device: torch.device | str = "cpu",
                   desc: str = "extract into memory", workers: int | None = None) -> SplitArrays:
    """--no-cache: the hidden states `layers` (None: all) of `utts` straight into memory, float16 as the cache stores
    them (the same batches and rounding as extract_split), nothing written to disk. `workers`: as _stream's."""
    held = layer_set(layers, upstream.num_hidden_states)
    lengths = expected_lengths(upstream, utts)
    hidden = np.empty((len(held), int(lengths.sum()), upstream.hidden_size), dtype=np.float16)

    def write(j: int, row: int, x: np.ndarray) -> None:
        hidden[j, row: row + len(x)] = x

    offsets = _stream(upstream, corpus, utts, held, write, batch_seconds, progress, device, desc, workers)
    return SplitArrays(hidden=hidden, offsets=offsets, layers=held, num_hidden_states=upstream.num_hidden_states)


def ensure_split(cache_root: Path, identity: dict[str, str], upstream: Upstream, corpus: Corpus, split: str,
                 utts: list[Utterance], progress: bool = True, device: torch.device | str = "cpu",
                 log=print, layers: Sequence[int] | None = None) -> tuple[SplitArrays, bool]:
    """(arrays, built): reuse a valid entry holding the hidden states `layers` (None: all) or build one;
    stale/corrupt ones are replaced. The arrays may hold more hidden states than asked (SplitArrays.layers says
    which). Safe with other processes building the same key at once (module docstring)."""
    need = layer_set(layers, upstream.num_hidden_states)
    query = EntryQuery.for_key(cache_key(identity, upstream, corpus, split, utts)[1])
    if found := find_entries(cache_root, query, need):  # the first holds the most hidden states
        return found[0].open(), False
    held = [e.layers for e in find_entries(cache_root, query)]  # entries of other subsets: the new one holds theirs too
    name, fields = cache_key(identity, upstream, corpus, split, utts, sorted(set(need).union(*held)))
    final = Path(cache_root) / name
    with _build_lock(final, log):
        if found := find_entries(cache_root, query, need):  # built by another process while this one waited
            return found[0].open(), False
        if final.exists():
            log(f"feature cache {final}: {entry_problem(final, fields)}; rebuilding")
            _discard(final)
        if held:
            log(f"feature cache {final.name}: no entry holds hidden states {_ids(need)} (the entries hold "
                f"{'; '.join(map(_ids, held))}): extracting {_ids(key_layers(fields))}, which serves them all; "
                f"the older entries are no longer read (docs/scale.md)")
        _remove_orphans(final, log)
        tmp = final.with_name(f".{name}.partial-{_owner_tag()}")
        try:
            extract_split(upstream, corpus, utts, tmp, fields, progress=progress, device=device)
            _publish(tmp, final, fields, log)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return CacheEntry(final, fields).open(), True


def _ids(layers: Sequence[int]) -> str:
    return ",".join(map(str, layers))


@contextlib.contextmanager
def _build_lock(final: Path, log) -> Iterator[bool]:
    """Hold an exclusive lock on building `final` (True), or go on without one where the filesystem has no file
    locks (False; then `_publish` keeps concurrent builds safe, at the price of duplicated work)."""
    locks = final.parent / LOCKS
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / f"{final.name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            log(f"feature cache {final.name}: another process is building it; waiting for it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                locked = True
            except OSError as e:
                log(f"feature cache {final.name}: lock failed ({e.strerror}); building without it")
                locked = False
        except OSError as e:  # ENOLCK, EOPNOTSUPP: no locks on this filesystem
            log(f"feature cache {final.name}: no file lock on this filesystem ({e.strerror}); building without it")
            locked = False
        yield locked
    finally:
        os.close(fd)  # releases the lock


def _publish(tmp: Path, final: Path, fields: dict[str, Any], log) -> None:
    """Rename the finished staging folder into place; if another process got there first, keep its entry."""
    try:
        os.replace(tmp, final)  # atomic: the key directory appears complete or not at all
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or entry_problem(final, fields) is not None:
            raise
        log(f"feature cache {final.name}: another process finished it first; using that copy")


def _discard(final: Path) -> None:
    """Remove an unusable entry: renamed aside first, so two processes discarding it at once do not collide."""
    aside = final.with_name(f".{final.name}.partial-{_owner_tag()}")
    try:
        os.replace(final, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _owner_tag() -> str:
    """'<pid>-<random>@<host>': who made a staging folder (a pid alone means nothing on another host)."""
    return f"{os.getpid()}-{secrets.token_hex(3)}@{socket.gethostname()}"


def _remove_orphans(final: Path, log=print) -> None:
    """Remove the staging folders of extractions into `final` whose process is gone (killed by a signal, its
    `finally` never ran). Only this host's processes can be checked: a staging folder of a live process, or of
    another host (perhaps a live job on shared storage), is left alone and named."""
    host = socket.gethostname()
    for tmp in final.parent.glob(f".{final.name}.partial-*"):
        tag = tmp.name.rsplit(".partial-", 1)[1]
        pid_part, _, owner_host = tag.partition("@")
        try:
            pid = int(pid_part.split("-")[0])
        except ValueError:
            continue
        if owner_host and owner_host != host:
            log(f"feature cache: {tmp} was left by host {owner_host} (a job there still running, or killed): "
                f"delete it when no job runs there")
        elif not _alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _bar(total: float, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="s audio", leave=False, dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}, {rate_fmt}]")

