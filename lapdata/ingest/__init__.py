"""``lapdata ingest``: photo collections -> identity-grouped shards (its config, one photo / identity / shard of work, the run)."""
