"""configs/pipeline_fashion_mnist.py with the plain autoencoder (MSE) of the same encoder and
decoder in place of the VAE, the same 4 epochs, and the linear probe only (on its 32-number
code), for the comparison of features in the README ("ELECTRA and contrastive pretraining").

  sslm-jax pipeline --config configs/pipeline_fashion_mnist_ae.py
"""

import os
import runpy

_pipeline = runpy.run_path(os.path.join(os.path.dirname(__file__), 'pipeline_fashion_mnist.py'))


def get_config():
  config = _pipeline['get_config']()
  config.pretrain.model.name = 'ae'
  config.pretrain.objective.name = 'mse'
  config.finetune.regimes = ('linear_probe',)
  config.finetune.scratch = False  # pipeline_fashion_mnist.py has the scratch run
  return config
