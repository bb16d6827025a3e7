"""Decoding every audio file once, at preparation: what a header cannot show is found before anything is written.

A header says a file's rate and length; only decoding shows NaN/inf samples, a FLAC stream that loses sync,
or data that ends before the header says (a truncated copy). `verify_audio` decodes every file of a corpus in
parallel threads (libsndfile runs without the GIL), streaming blocks so that memory stays flat, and records
each problem with the manifest line that named the file, so one run lists all of them.
"""
from __future__ import annotations

import math
import os
import struct
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from itertools import islice
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from core.frames import SAMPLE_RATE, WIN

BLOCK_FRAMES = 1 << 18  # frames decoded per read: memory stays at a few MB whatever the file's length
MIN_SECONDS = WIN / SAMPLE_RATE  # one analysis window (25 ms): shorter audio has no full front-end frame
# what a header read cannot see; printed by `--no-verify-audio`
SKIPPED_WITHOUT_DECODING = ("NaN/inf samples, truncated files and undecodable (corrupt) audio data are not looked "
                            "for; such a file stops the benchmark when it is first read")

# soundfile raises LibsndfileError (a RuntimeError) for corrupt data, TypeError/ValueError for unknown formats
DECODE_ERRORS = (sf.SoundFileError, RuntimeError, TypeError, ValueError, OSError)


def default_workers() -> int:
    """Every CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def min_samples(sample_rate: int) -> int:
    """The shortest usable audio at `sample_rate`: one 25 ms analysis window."""
    return math.ceil(MIN_SECONDS * sample_rate)


def length_problem(path: Path, sample_rate: int, num_samples: int) -> str | None:
    """Why audio of this length cannot be used (from its header), or None."""
    if num_samples <= 0:
        return f"zero-length audio: {path}"
    need = min_samples(sample_rate)
    if num_samples < need:
        return (f"audio too short: {path} holds {num_samples} samples ({1000 * num_samples / sample_rate:.1f} ms); "
                f"at least {need} ({1000 * MIN_SECONDS:.0f} ms, one analysis window) are needed")
    return None


def wav_truncation(path: Path) -> str | None:
    """A RIFF WAV file whose data chunk declares more bytes than the file holds (libsndfile silently reads
    what is there, so decoding alone does not see a cut copy)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        size = path.stat().st_size
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, n = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                have = size - f.tell()
                if n in (0, 0xFFFFFFFF) or n <= have:  # 0 / all ones: a streamed file of unknown length
                    return None
                return f"truncated WAV: {path}: its data chunk declares {n} bytes, the file holds {have}"
            f.seek(n + (n & 1), 1)  # chunks are word-aligned


def decode_problem(path: Path, header_frames: int) -> str | None:
    """Decode `path` completely; why it cannot be used, or None when every sample is a finite number."""
    try:
        cut = wav_truncation(path)
    except OSError as e:
        return f"unreadable audio: {path}: {e}"
    if cut is not None:
        return cut
    decoded = bad = 0
    try:
        with sf.SoundFile(str(path)) as f:
            while True:
                block = f.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
                if not len(block):
                    break
                decoded += len(block)
                bad += int(block.size - np.count_nonzero(np.isfinite(block)))
    except DECODE_ERRORS as e:
        return f"undecodable audio (corrupt or truncated): {path}: {e}"
    if decoded != header_frames:
        return (f"truncated or corrupt audio: header of {path} says {header_frames} samples, "
                f"only {decoded} decode")
    if bad:
        return f"audio {path} holds {bad} NaN/inf samples"
    return None


def verify_audio(files: list[tuple[Path, int, str]], workers: int, progress: bool = True) -> list[tuple[str, str]]:
    """Decode each (path, header frames, where) in `workers` threads; [(where, problem)] in input order.

    At most 4 files per thread are queued at a time, so a corpus of 300,000 files costs no more memory than 30."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    problems: list[str | None] = [None] * len(files)
    todo = iter(enumerate(files))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify-audio") as pool, \
            tqdm(total=len(files), desc="verify audio", unit="file", disable=not progress, dynamic_ncols=True) as bar:
        running = {pool.submit(decode_problem, path, n): i for i, (path, n, _) in islice(todo, 4 * workers)}
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                problems[running.pop(fut)] = fut.result()
                bar.update(1)
            running.update({pool.submit(decode_problem, path, n): i for i, (path, n, _) in islice(todo, len(done))})
    return [(files[i][2], p) for i, p in enumerate(problems) if p is not None]
