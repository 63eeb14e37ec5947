"""``lapdata audit``: a dataset's shards and manifests checked against each other, as a list of named checks."""
