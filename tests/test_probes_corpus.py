"""The tiny generated probe corpus (tests.fixtures.make_tiny_corpus) the probe, cache and harness tests use."""
from __future__ import annotations

from pathlib import Path

from tests.fixtures import make_tiny_corpus


def test_tiny_corpus_loads(tmp_path: Path) -> None:
    c = make_tiny_corpus(tmp_path / "c", n_speakers=2, per_speaker={"train": 2, "dev": 1, "test": 1})
    assert len(c.utterances("train")) == 4 and c.speakers == ("spk0", "spk1")
    assert c.audio_path(c.utterances("dev")[0]).is_file()
