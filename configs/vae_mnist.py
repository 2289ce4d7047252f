"""The seed's VAE on MNIST, with the seed's hyper-parameters (seed-reference.md).

MNIST offline: put MNIST's four IDX files in a folder and pass
--config.data.name=idx_images/mnist --config.data.manual_dir=/that/folder.
"""

from sslm_jax.runs import run_config


def get_config():
  config = run_config('vae', 'seed')
  config.data.name = 'mnist'
  return config
