"""lapdata: identity-grouped WebDataset archives for LAP (ingest, synthetic sets, face parsing, audit)."""

__version__ = "0.1.0"
