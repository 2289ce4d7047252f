"""The seed's encoder and decoder as a deterministic autoencoder (MSE) on Fashion-MNIST."""

from sslm_jax.config import base_config


def get_config():
  config = base_config()
  config.model.name = 'ae'
  config.objective.name = 'mse'
  config.data.name = 'fashion_mnist'
  return config
