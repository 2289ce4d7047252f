"""The corrected seed VAE in PyTorch (shared/design/seed-reference.md), for parity and timing."""

from benchmarks.pytorch_reference.model import VAE, AutoEncoder, seed_loss  # noqa: F401
