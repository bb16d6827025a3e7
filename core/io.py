"""Atomic file writes and content hashing: nothing half-written is ever mistaken for done."""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new `.<name>.<random>.tmp` beside `path`, open for writing, created with mode 0o666 so that the kernel
    applies the process umask (and any default ACL): the file renamed into place gets the permissions a plain
    `open(path, "w")` would. tempfile.mkstemp creates 0o600 files, which left checkpoints, reports and cache
    metadata unreadable by the group and others under umask 022. O_EXCL: never reuse someone else's file."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue


def new_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0o666 less the process umask. For files made by code that
    creates them private (safetensors' save_file writes 0o600), chmod-ed to this before they are renamed into place.
    The umask is read from /proc (Linux), since os.umask can only be read by setting it, which races with threads
    creating files; elsewhere it is set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def decode_utf8(raw: bytes, path: str | Path, what: str = "file", first_line: int = 1) -> str:
    """`raw` as UTF-8 text (a BOM is dropped); other encodings are a ValueError naming the file, line and byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = first_line + raw.count(b"\n", 0, e.start)
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(f"{path}:{line}: {what} is not UTF-8 text (byte 0x{raw[e.start]:02x} at column {column}); "
                         f"save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 OLD > NEW`") from None


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file; see decode_utf8 for the error on other encodings."""
    return decode_utf8(Path(path).read_bytes(), path, what)


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Read JSON, turning a missing or malformed file into a ValueError that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path} is corrupt or truncated: {e}") from e


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-serialisable object (sorted keys), for cache keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
