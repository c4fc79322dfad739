"""Paper preprocessing per dataset kind into content-addressed shards (see shards.py for the index)."""

from medops.preprocess.shards import load_index  # noqa: F401
