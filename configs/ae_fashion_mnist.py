"""The seed's encoder and decoder as a deterministic autoencoder (MSE) on Fashion-MNIST."""

from sslm_jax.runs import run_config


def get_config():
  config = run_config('ae', 'mse')
  config.data.name = 'fashion_mnist'
  return config
