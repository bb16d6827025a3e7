"""What a group of frozen probes reads, and in which order: blocks of a split's rows, resident or streamed.

A split's rows (frames, or one mean per utterance for utterance-level tasks) are laid out flat, as the feature
cache stores them, and grouped into blocks of BLOCK_ROWS rows: what is read, whitened and held as one unit.
Evaluation splits are cut into contiguous blocks. The training split's blocks are SCATTERED: each is
BLOCK_ROWS // PIECE_ROWS pieces of PIECE_ROWS consecutive rows drawn from the whole split (a fixed permutation),
because consecutive rows are one utterance's frames and consecutive utterances one speaker's. With contiguous
blocks a chunk of the built-in corpus's 10-ms frames held 28-48 of its 100 speakers (30-ms frames: 61-71) and none
of the others' frames, so each stretch of minibatches pulled a speaker probe towards those; scattered, every chunk
holds all 100 in about their proportions (perf/feed_coverage.py). The natural-gradient probe, whose step grows where
predictions are spread thin, moved furthest off (docs/benchmark.md). Training pass k visits the
blocks in a permutation fixed by k alone, CHUNK_BLOCKS blocks at a time (a chunk); inside a chunk each probe takes
its own rows (those of its training utterances), shuffled by its own generator, in minibatches. A probe's batches
therefore depend on its seed, its subset and the corpus only: never on which other probes train beside it, nor on
where the rows came from. Every block is whitened as it is read (the transforms fitted on the train split in one
streaming pass, downstream.heads.Whitening) and kept in the group's row dtype (the model's compute dtype when it is
bfloat16, else the cache's float16), one block at a time, so a row is the same bits whether the block was read once
and held or read again. The rows a group needs stay resident (on the GPU
when there is one) when they fit in the memory budget; when they do not, each block is read from the cache and
whitened once, kept on disk as whitened (`Spill`), and read back from there by every later chunk, so the memory a
probe run holds does not grow with the corpus.
"""
from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from core.allocator import release
from downstream.heads import Whitening
from downstream.loop import Batch
from downstream.sources import ArraySource

BLOCK_ROWS = 2048  # rows a block: what is read, whitened and held as one unit, and the unit of a pass's order
PIECE_ROWS = 16  # rows a piece: a training split's blocks are drawn from the whole split in pieces this long
CHUNK_BLOCKS = 32  # blocks a chunk (65,536 rows): what is read, and shuffled within, at once
EVAL_ROWS = 8192  # rows per evaluation matmul: bounds the (probes, rows, classes) logits held at once
SCHEDULE_SEED = 0x5CED
SPILL_SPARE = 1 << 30  # free bytes a spill file leaves on its disk, beyond its own size


class Spill:
    """A streamed store's whitened blocks, written as the first request reads them and read back by every later one:
    one contiguous read of a block's rows as held, where the cache needs a positioned read per run of the block's
    scattered rows and a whitening matmul per hidden state (4.1x the resident group's time on mockingjay's
    weighted-sum phone_linear group, 4 x 256 per row: perf/probe_groups.py --streamed). The bytes are those the
    whitening wrote, so a row is the same bits from the spill, the cache or the held rows. An unnamed temporary file
    beside the cache (deleted by the OS when closed, also after a crash), written and read through the page cache
    like the cache itself: nothing of it counts in the process's resident memory."""

    def __init__(self, directory: str | None) -> None:
        self.file = tempfile.TemporaryFile(dir=directory)
        self.at: dict[int, int] = {}  # block -> its byte offset in the file
        self.end = 0

    @classmethod
    def beside(cls, source: ArraySource, split: str, rows: int, row_bytes: int) -> "Spill | None":
        """A spill file for `rows` rows of `row_bytes` each, in the directory of the split's cache file, else (no
        file, or a directory this process cannot write: a shared, read-only cache) in the system's temporary
        directory; None where neither has the room or can be written (every request then reads the cache)."""
        name = getattr(source.splits[split].hidden, "filename", None)
        for directory in ([str(Path(name).parent)] if name else []) + [tempfile.gettempdir()]:
            try:
                if shutil.disk_usage(directory).free >= rows * row_bytes + SPILL_SPARE:
                    return cls(directory)
            except OSError:
                continue
        return None

    def put(self, k: int, x: Tensor) -> None:
        data = x.contiguous().view(-1).view(torch.uint8).numpy()
        os.pwrite(self.file.fileno(), memoryview(data), self.end)
        self.at[k] = self.end
        self.end += len(data)

    def get(self, k: int, out: Tensor) -> None:
        """Block k's rows into `out` (a contiguous CPU tensor of its rows, as held)."""
        view = memoryview(out.view(-1).view(torch.uint8).numpy())
        got = os.preadv(self.file.fileno(), [view], self.at[k])
        if got != len(view):
            raise OSError(f"spill file: read {got} of {len(view)} bytes of block {k}")


@dataclass
class Chunk:
    """Rows of one or more blocks: x (n, L, D) as held (every hidden state of a row side by side, so a minibatch
    is one gather), y (n,) labels and utt (n,) utterance ids (CPU). Resident rows are not copied into a chunk:
    x is then the held rows and `at` (n,) the position in x of each of the chunk's rows (None: x is the chunk)."""

    x: Tensor
    y: Tensor
    utt: Tensor
    at: Tensor | None = None

    def rows(self, a: int, b: int) -> Tensor:
        """The chunk's rows a..b-1 (evaluation reads a chunk in order)."""
        if self.at is None:
            return self.x[a:b]
        at = self.at[a:b]
        lo = int(at[0])
        if int(at[-1]) - lo == len(at) - 1:  # contiguous (a split read in order): a view, no copy
            return self.x[lo: lo + len(at)]
        return self.x.index_select(0, at)


class RowStore:
    """The rows `keep_utts` (None: all) of one split, hidden states `layers`, read block by block and whitened.

    resident: read once, held on `device`; else every request reads its blocks again, from the spill file where an
    earlier request wrote them (`Spill`), else from the cache file. `dtype`: what a whitened
    row is held in (None: the cache's dtype). A bfloat16 model reads bfloat16 rows: converted once here, not per
    minibatch.
    """

    def __init__(self, source: ArraySource, split: str, layers: list[int], whiten: list[Whitening], labels: np.ndarray,
                 keep_utts: np.ndarray | None, resident: bool, device: torch.device,
                 dtype: torch.dtype | None = None, scattered: bool = False) -> None:
        self.source, self.split, self.layers, self.whiten, self.device = source, split, list(layers), whiten, device
        stored = torch.from_numpy(np.zeros(0, dtype=source.splits[split].hidden.dtype)).dtype
        self.dtype = stored if dtype is None else dtype
        self.offsets = source.splits[split].offsets
        self.n_rows = int(self.offsets[-1])
        self._blocks, self._run = block_layout(self.n_rows, scattered), run_rows(scattered)
        self.n_blocks = len(self._blocks)
        self.keep_utts = keep_utts
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        if len(self.labels) != self.n_rows:
            raise ValueError(f"{split}: {len(self.labels)} labels for {self.n_rows} rows")
        # the utterances of every block, to skip blocks holding no row of the probes still training
        self.block_utts = [np.unique(np.searchsorted(self.offsets, self._span(k), side="right") - 1)
                           for k in range(self.n_blocks)]
        self._resident: tuple[Tensor, np.ndarray] | None = None
        # a streamed store's whitened blocks, kept on disk for every request after the first (Spill)
        self._spill = None if resident else Spill.beside(
            source, split, self.n_rows, len(self.layers) * source.hidden_size * self.dtype.itemsize)
        if resident:  # filled block by block into one allocation: never a second copy of the rows
            rows = [self._rows(k) for k in range(self.n_blocks)]
            self._starts = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
            x = torch.empty(int(self._starts[-1]), len(self.layers), source.hidden_size, dtype=self.dtype,
                            device=device)
            for k in range(self.n_blocks):
                x[int(self._starts[k]): int(self._starts[k + 1])] = self._read(rows[k])
            self._resident = (x, np.concatenate(rows))

    @property
    def streamed(self) -> bool:
        """Whether requests read the cache file again (else the rows are held)."""
        return self._resident is None

    def _span(self, k: int) -> np.ndarray:
        """Every row of block k, sorted."""
        return block_rows(self._blocks[k], self._run, self.n_rows)

    def _rows(self, k: int) -> np.ndarray:
        """The rows of block k this store holds (those of `keep_utts`), sorted."""
        rows = self._span(k)
        if self.keep_utts is not None:
            rows = rows[self.keep_utts[np.searchsorted(self.offsets, rows, side="right") - 1]]
        return rows

    def _read(self, rows: np.ndarray) -> Tensor:
        """The whitened rows `rows` (sorted, within one block), (len(rows), L, D) in the held dtype."""
        if len(rows) == 0:
            return torch.empty(0, len(self.layers), self.source.hidden_size, dtype=self.dtype)
        # one positioned read per run of consecutive rows (a contiguous block: one; a scattered block: a few per piece)
        cuts = np.flatnonzero(np.diff(rows) != 1) + 1
        runs = [(int(r[0]), int(r[-1]) + 1) for r in np.split(rows, cuts)]
        with torch.no_grad():
            x = [w(self.source.read_runs(self.split, k_, runs).float()).to(self.dtype)
                 for k_, w in zip(self.layers, self.whiten)]
        return torch.stack(x, 1)

    def has_rows(self, k: int, utts: np.ndarray) -> bool:
        """Whether block k holds a row of one of the utterances marked in `utts` (bool, n_utts)."""
        return bool(utts[self.block_utts[k]].any())

    def chunk(self, blocks: list[int]) -> Chunk:
        at = None
        if self._resident is not None:  # no copy: the chunk's rows are positions in the held rows
            x, rows_all = self._resident
            pos = np.concatenate([np.arange(self._starts[k], self._starts[k + 1]) for k in blocks])
            rows = rows_all[pos]
            at = torch.from_numpy(pos).to(self.device)
        else:  # filled block by block: one chunk in memory, not its blocks beside it
            parts = [self._rows(k) for k in blocks]
            x = torch.empty(sum(map(len, parts)), len(self.layers), self.source.hidden_size, dtype=self.dtype)
            a = 0
            for k, r in zip(blocks, parts):
                if self._spill is not None and k in self._spill.at:
                    self._spill.get(k, x[a: a + len(r)])
                else:
                    x[a: a + len(r)] = self._read(r)
                    if self._spill is not None:
                        self._spill.put(k, x[a: a + len(r)])
                a += len(r)
            x = x.to(self.device)
            rows = np.concatenate(parts)
        r = torch.from_numpy(rows)
        utt = torch.from_numpy(np.searchsorted(self.offsets, rows, side="right") - 1)
        return Chunk(x, self.labels.index_select(0, r).to(self.device), utt, at)

    def chunks(self) -> "list[list[int]]":
        """Every block in order, CHUNK_BLOCKS at a time (evaluation)."""
        return [list(range(a, min(self.n_blocks, a + CHUNK_BLOCKS))) for a in range(0, self.n_blocks, CHUNK_BLOCKS)]


def block_layout(n_rows: int, scattered: bool) -> list[np.ndarray]:
    """The blocks of a split of `n_rows` rows, each as the first rows of its runs (sorted) of `run_rows(scattered)`
    consecutive rows: contiguous, one run of BLOCK_ROWS rows; `scattered`, BLOCK_ROWS // PIECE_ROWS pieces drawn from
    the whole split by a permutation fixed by SCHEDULE_SEED alone."""
    if not scattered:
        return [np.array([a]) for a in range(0, max(n_rows, 1), BLOCK_ROWS)]
    perm = torch.randperm(max(1, math.ceil(n_rows / PIECE_ROWS)),
                          generator=torch.Generator().manual_seed(SCHEDULE_SEED)).numpy()
    per_block = max(1, BLOCK_ROWS // PIECE_ROWS)
    return [np.sort(perm[a: a + per_block]) * PIECE_ROWS for a in range(0, len(perm), per_block)]


def run_rows(scattered: bool) -> int:
    """Rows in each run of a block of `block_layout`."""
    return PIECE_ROWS if scattered else BLOCK_ROWS


def block_rows(starts: np.ndarray, length: int, n_rows: int) -> np.ndarray:
    """Every row of a block given as the starts of its runs of `length` rows, sorted (the split ends at n_rows)."""
    rows = (starts[:, None] + np.arange(length)).ravel()
    return rows[rows < n_rows]


def pass_order(n_blocks: int, k: int) -> list[list[int]]:
    """The chunks of training pass k: a permutation of the blocks fixed by k alone, CHUNK_BLOCKS at a time."""
    g = torch.Generator().manual_seed(SCHEDULE_SEED * 1_000_003 + k)
    order = torch.randperm(n_blocks, generator=g).tolist()
    return [order[a: a + CHUNK_BLOCKS] for a in range(0, n_blocks, CHUNK_BLOCKS)]


def stored_bytes(source: ArraySource, layers: list[int], rows: int) -> int:
    """Bytes of `rows` rows of hidden states `layers` as stored."""
    arrays = next(iter(source.splits.values()))
    return rows * len(layers) * source.hidden_size * arrays.hidden.dtype.itemsize


class Buffers:
    """One buffer of the rows' dtype and one of the model's compute dtype (float32 or bfloat16, downstream.stacked)
    reused by every step: a fresh (probes x batch x layers x D) tensor per step costs more in page faults than the
    gather itself, and rows converted here once are not converted again by the model. Rows already held in the
    compute dtype are gathered straight into it."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self.stored: Tensor | None = None
        self.compute: Tensor | None = None

    def gather(self, x: Tensor, idx: Tensor) -> Tensor:
        """x[idx] in the compute dtype, (len(idx), *x.shape[1:]), in the reused buffers."""
        shape = (len(idx), *x.shape[1:])
        n = int(np.prod(shape))
        if self.compute is None or self.compute.numel() < n or self.compute.device != x.device or (
                x.dtype != self.dtype and (self.stored is None or self.stored.dtype != x.dtype)):
            self.stored = None if x.dtype == self.dtype else torch.empty(n, dtype=x.dtype, device=x.device)
            self.compute = torch.empty(n, dtype=self.dtype, device=x.device)
        assert self.compute is not None
        if x.dtype == self.dtype:
            return torch.index_select(x, 0, idx, out=self.compute[:n].view(shape))
        stored = self.stored[:n].view(shape)
        torch.index_select(x, 0, idx, out=stored)
        return self.compute[:n].view(shape).copy_(stored)


def chunk_batches(member: Tensor, ids: Tensor, utt: Tensor, gens: list[torch.Generator],
                  batch_size: int) -> tuple[Tensor, Tensor]:
    """Each probe's rows of a chunk (those of its utterances), shuffled by its own generator, cut into minibatches:
    (A, S, B) positions in the chunk and (A, S, B) validity (a probe's last batch may be short, and a probe with
    fewer rows than another idles for the rest of the chunk)."""
    mask = member[ids][:, utt]  # (A, n)
    picks = []
    for a, i in enumerate(ids.tolist()):
        idx = mask[a].nonzero().squeeze(1)
        picks.append(idx[torch.randperm(len(idx), generator=gens[i])])
    S = max(1, max(math.ceil(len(p) / batch_size) for p in picks))
    batches = torch.zeros(len(picks), S * batch_size, dtype=torch.long)
    valid = torch.zeros(len(picks), S * batch_size, dtype=torch.bool)
    for a, p in enumerate(picks):
        batches[a, :len(p)] = p
        valid[a, :len(p)] = True
    return batches.view(len(picks), S, batch_size), valid.view(len(picks), S, batch_size)


class ChunkFeed:
    """The minibatches of a group of probes over the train split's rows, pass after pass, in the order described
    above. A step's data: (x (A', B, L, D) in `dtype`, y (A', B), valid (A', B), positions (A',)) for the A' probes
    that have rows left in the chunk; a pass ends with a step of no probe. `keep` follows the probes still
    training (finished ones take no more rows)."""

    def __init__(self, store: RowStore, member: Tensor, gens: list[torch.Generator], batch_size: int,
                 dtype: torch.dtype = torch.float32) -> None:
        self.store, self.member, self.gens, self.batch_size = store, member, gens, batch_size
        self.ids = torch.arange(len(member))
        self.buffers = Buffers(dtype)  # minibatches in the model's compute dtype
        self._batches: Tensor | None = None
        self._valid: Tensor | None = None

    def keep(self, positions: Tensor) -> None:
        self.ids = self.ids[positions]
        if self._batches is not None and self._valid is not None:
            self._batches, self._valid = self._batches[positions], self._valid[positions]

    def __iter__(self) -> Iterator[Batch]:
        store, B, dev = self.store, self.batch_size, self.store.device
        for k in itertools.count():
            for blocks in pass_order(store.n_blocks, k):
                wanted = self.member[self.ids].any(0).numpy()
                blocks = [b for b in blocks if store.has_rows(b, wanted)]
                if not blocks:
                    continue
                chunk = store.chunk(blocks)
                self._batches, self._valid = chunk_batches(self.member, self.ids, chunk.utt, self.gens, B)
                for s in range(self._batches.shape[1]):
                    active = self._valid[:, s].any(1)
                    pos = active.nonzero().squeeze(1)
                    if len(pos) == 0:
                        continue
                    idx, ok = self._batches[pos, s].to(dev).reshape(-1), self._valid[pos, s].to(dev)
                    held = idx if chunk.at is None else chunk.at[idx]
                    x = self.buffers.gather(chunk.x, held).view(len(pos), B, *chunk.x.shape[1:])
                    yield Batch((x, chunk.y[idx].view(len(pos), B), ok, pos), active)
                del chunk  # freed before the next is read: one streamed chunk in memory at a time, not two
            # a streamed pass's freed chunks go back to the OS (core.allocator); a held store's pass frees only
            # activations, which the next pass takes again (trimmed, each of their pages would fault back in)
            if store.streamed:
                release()
            yield Batch(None, torch.zeros(len(self.ids), dtype=torch.bool), pass_end=True)
