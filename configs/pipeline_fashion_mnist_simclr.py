"""configs/pipeline_fashion_mnist.py with SimCLR pretraining (configs/simclr_fashion_mnist.py)
in place of the VAE, for about the VAE's pretraining time on 2 cores (README: "ELECTRA and
contrastive pretraining"), and the linear probe only: a linear head on the encoder's 256
features h (the VAE's probe reads its 32-number posterior mean), Adam 1e-2, 3 epochs, selected on
the 10% validation carved from train; beside logistic regression on the raw pixels, and the
same logistic regression on h of the pretrained and of a random encoder (the feature probes of
pipeline_fashion_mnist.py). README, "ELECTRA and contrastive pretraining", has what it gave.

  sslm-jax pipeline --config configs/pipeline_fashion_mnist_simclr.py
"""

from sslm_jax.configs import pipeline_fashion_mnist, simclr_fashion_mnist


def get_config():
  config = pipeline_fashion_mnist.get_config()
  config.pretrain = simclr_fashion_mnist.get_config()
  config.finetune.regimes = ('linear_probe',)
  config.finetune.scratch = False  # pipeline_fashion_mnist.py has the scratch run
  return config
