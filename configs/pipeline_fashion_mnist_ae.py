"""configs/pipeline_fashion_mnist.py with the plain autoencoder (MSE) of the same encoder and
decoder in place of the VAE, the same 4 epochs, and the linear probe only (on its 32-number
code), for the comparison of features in the README ("ELECTRA and contrastive pretraining").

  sslm-jax pipeline --config configs/pipeline_fashion_mnist_ae.py
"""

from sslm_jax.configs import pipeline_fashion_mnist
from sslm_jax.runs import reshape


def get_config():
  config = pipeline_fashion_mnist.get_config()
  config.pretrain = reshape(config.pretrain, 'ae', 'mse')
  config.finetune.regimes = ('linear_probe',)
  config.finetune.scratch = False  # pipeline_fashion_mnist.py has the scratch run
  return config
