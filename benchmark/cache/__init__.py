"""The feature cache: each upstream's hidden states, extracted once per corpus split and reused (extract.py writes
entries, reader.py finds, validates and opens them). The lowest layer of the harness: it imports no other part."""
