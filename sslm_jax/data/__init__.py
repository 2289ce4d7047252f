"""Data through tfds: image datasets, local-file builders (and, later, text)."""
