"""Paper preprocessing (Table 2) with a content-addressed shard cache."""

from medops.preprocess.pipeline import load_index, preprocess_dataset  # noqa: F401
