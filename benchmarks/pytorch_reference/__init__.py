"""PyTorch references for parity and timing: the corrected seed VAE
(shared/design/seed-reference.md; `model`) and the GPT of sslm_jax.models.transformer (`gpt`)."""

from benchmarks.pytorch_reference.model import VAE, AutoEncoder, seed_loss  # noqa: F401
