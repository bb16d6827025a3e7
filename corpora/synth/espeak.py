"""ctypes binding to libespeak-ng (GPL-3.0, loaded at run time from the `espeakng-loader` wheel).

Only what the corpus builder needs: synchronous synthesis of one text into int16 samples plus the
start sample of every phoneme (phoneme events). Pitfalls handled here (observed with libespeak-ng 1.52 from the
espeakng-loader wheel):
- voices are loaded with espeak_SetVoiceByFile and its status is checked, because a misspelled voice
  NAME silently falls back to the default voice;
- the library keeps clock-seeded randomness between utterances, so callers set the seed
  (espeak_ng_SetRandSeed) and use one process per speaker.
This module is the only place that touches the library: replacing the synthesiser means replacing it.
"""
from __future__ import annotations

import ctypes
import shutil
import tempfile
from pathlib import Path

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
INITIALIZE_DONT_EXIT = 0x8000
CHARS_UTF8 = 1
PHONEME_INPUT = 0x100  # espeakPHONEMES: text in [[ ]] is read as phoneme mnemonics
EVENT_LIST_TERMINATED, EVENT_PHONEME = 0, 7
MAX_VOICE_PATH = 40  # espeak-ng's LoadVoice keeps the voice name in char[40]
PARAM_RATE, PARAM_VOLUME, PARAM_PITCH, PARAM_RANGE, PARAM_WORDGAP = 1, 2, 3, 4, 7


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class ESpeakError(RuntimeError):
    """libespeak-ng is missing or refused a request."""


class ESpeak:
    """One initialised libespeak-ng. The library is process-global: create one per process."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as e:  # pragma: no cover - it is in requirements.txt
            raise ESpeakError("the built-in corpus needs the `espeakng-loader` wheel: pip install espeakng-loader") from e
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = int(self._lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data,
                                                           INITIALIZE_PHONEME_EVENTS | INITIALIZE_DONT_EXIT))
        if self.sample_rate <= 0:
            raise ESpeakError(f"espeak_Initialize failed (returned {self.sample_rate}) with data path {data!r}")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        self._cb = _CALLBACK(self._on_audio)  # keep a reference: the library holds only the raw pointer
        self._lib.espeak_SetSynthCallback(self._cb)

    def _on_audio(self, wav, n, events) -> int:  # noqa: ANN001 - ctypes pointers
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            if events[i].type == EVENT_PHONEME:
                self._events.append((events[i].id.string.decode("ascii", "replace"), int(events[i].sample)))
            i += 1
        return 0

    def set_voice_file(self, path: str | Path) -> None:
        raw = str(path).encode()
        if len(raw) < MAX_VOICE_PATH:
            status = self._lib.espeak_SetVoiceByFile(raw)
        else:  # the library copies the path into a 40-byte buffer: load a copy from a short path
            short = Path(tempfile.mkdtemp(dir="/tmp" if Path("/tmp").is_dir() else None)) / "v"
            try:
                short.write_bytes(Path(path).read_bytes())
                if len(str(short).encode()) >= MAX_VOICE_PATH:
                    raise ESpeakError(f"cannot load voice file {path}: libespeak-ng needs a path under "
                                      f"{MAX_VOICE_PATH} bytes and the temp folder {short.parent} is too long")
                status = self._lib.espeak_SetVoiceByFile(str(short).encode())
            except OSError as e:
                raise ESpeakError(f"libespeak-ng could not load voice file {path}: {e}") from e
            finally:
                shutil.rmtree(short.parent, ignore_errors=True)
        if status != 0:
            raise ESpeakError(f"libespeak-ng could not load voice file {path} (status {status})")

    def set_param(self, param: int, value: int) -> None:
        status = self._lib.espeak_SetParameter(param, int(value), 0)
        if status != 0:
            raise ESpeakError(f"espeak_SetParameter({param}, {value}) failed (status {status})")

    def set_seed(self, seed: int) -> None:
        self._lib.espeak_ng_SetRandSeed(int(seed) % 2**31)

    def synth(self, text: str, phonemes: bool = False) -> tuple[np.ndarray, list[tuple[str, int]]]:
        """(int16 samples, [(phoneme mnemonic, start sample)]) for `text`, samples counted from 0.

        `phonemes`: `[[...]]` in the text is eSpeak phoneme mnemonics (e.g. "[[j'Es]]"), not words to spell."""
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        flags = CHARS_UTF8 | (PHONEME_INPUT if phonemes else 0)
        status = self._lib.espeak_Synth(data, len(data), 0, 0, 0, flags, None, None)
        if status != 0:
            raise ESpeakError(f"espeak_Synth failed (status {status}) on text {text!r}")
        self._lib.espeak_Synchronize()
        wav = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return wav.astype(np.int16, copy=False), list(self._events)
