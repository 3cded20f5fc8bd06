"""Data stage: catalogs, QA rules, manifests (dataset versions), shards and the streaming loader."""
