"""tfds builders for local files. Importing this package registers them with tfds."""

from sslm_jax.data.builders.idx_images import IdxImages
from sslm_jax.data.builders.text_files import TextFiles

__all__ = ['IdxImages', 'TextFiles']
