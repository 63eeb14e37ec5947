"""The dataset format: the sample and manifest contracts, the shard writer and reader, manifests, the resume rule, splits, duplicates, merge, and the audit."""
