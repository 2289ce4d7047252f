"""The seed's VAE and objective on Fashion-MNIST, full seed schedule (30 epochs, batch 64).

Offline (Debian's dataset-fashion-mnist): --config.data.name=idx_images/fashion_mnist
--config.data.manual_dir=/usr/share/datasets/fashion-mnist
"""

from sslm_jax.runs import run_config


def get_config():
  config = run_config('vae', 'seed')
  config.data.name = 'fashion_mnist'
  return config
