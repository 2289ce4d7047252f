"""`make demo`: the seed VAE on real Fashion-MNIST from Debian's dataset-fashion-mnist package.

A real training run of a few epochs with the seed's hyper-parameters (batch 64, Adam 1e-3,
latent 32, the seed objective), sized to finish in under 15 minutes on 2 CPU cores.
The full 30-epoch schedule: --config.train.num_epochs=30.
"""

from sslm_jax.runs import run_config


def get_config():
  config = run_config('vae', 'seed')
  config.data.name = 'idx_images/fashion_mnist'
  config.data.manual_dir = '/usr/share/datasets/fashion-mnist'
  config.data.data_dir = 'data/tfds'
  config.train.num_epochs = 4
  config.train.checkpoint_every_steps = 500
  return config
