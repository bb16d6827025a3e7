"""A plan's inputs: the corpus (corpus.py) and each upstream (upstream.py), planned without building anything,
then built (prepared, loaded or pretrained). Imports no other part of the harness."""
