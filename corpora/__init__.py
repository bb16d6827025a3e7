"""Corpora as data: JSONL manifests of utterances (audio, speaker, split, phone alignment) and their preparation."""
