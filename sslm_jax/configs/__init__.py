"""The experiment configs of the top-level configs/ folder, importable as `sslm_jax.configs.<name>`
(so configs compose by import: `from sslm_jax.configs import gpt_fortunes`).

In a source tree (a clone, an editable install, PYTHONPATH) this package's modules are that
folder's files; an installed wheel holds them here instead (pyproject.toml maps the package to
configs/, whose own __init__.py then stands in for this one).
"""

import os

_FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), 'configs')
if os.path.isdir(_FOLDER):
  __path__ = [_FOLDER]
