"""Experiment configs, one file a run or pipeline (`sslm-jax train --config configs/<name>.py`),
importable as `sslm_jax.configs.<name>`, so that configs compose by import."""
