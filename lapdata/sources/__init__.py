"""Photo sources: the records of each source layout, decoding a photo's bytes, MXNet RecordIO."""
