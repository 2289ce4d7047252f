"""Kernels outside XLA, each optional with an XLA fallback."""
