"""The built-in corpus: speech synthesised with eSpeak NG (GPL-3.0, loaded at run time) with exact phone alignments.

Self-contained and replaceable: the rest of the toolkit sees only the prepared manifests.
"""
