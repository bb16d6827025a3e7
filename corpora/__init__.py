"""Corpora as data: JSONL manifests of utterances (audio, speaker, split, phone alignment) and their preparation."""
from corpora.manifest import Corpus, Segment, Utterance, is_prepared, load_corpus, read_manifest
from corpora.registry import PREPARERS, ensure_default_corpus, prepare_corpus

__all__ = ["Corpus", "Segment", "Utterance", "PREPARERS", "ensure_default_corpus", "is_prepared", "load_corpus",
           "prepare_corpus", "read_manifest"]
