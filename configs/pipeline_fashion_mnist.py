"""Does the seed VAE's self-supervised pretraining help Fashion-MNIST classification?

Real Fashion-MNIST from Debian's dataset-fashion-mnist, read by the idx_images builder. The
dataset has no validation split: validation is a stratified 10% of each class of `train`
(seed 0), removed from fine-tuning's training data; pretraining sees all 60,000 training
images without labels; test (10,000) is read once per model.

  1. pretrain: the seed VAE of configs/demo.py (4 epochs, batch 64, Adam 1e-3, latent 32).
  2. fine-tune: a linear head on the posterior mean (32 numbers): a linear probe (encoder
     frozen, Adam 1e-2) and full fine-tuning (Adam 1e-3, the encoder at 0.3x); 3 epochs each.
  3. the same classifier from random weights with the same budget, and multinomial logistic
     regression on the raw pixels (C chosen on validation).
  4. the same logistic regression on the frozen, standardized encoder features: of the
     pretrained encoder, and of the same encoder at random initialization (the control).

  sslm-jax pipeline --config configs/pipeline_fashion_mnist.py   # -> runs/pipeline_fashion_mnist
"""

from sslm_jax.configs import demo
from sslm_jax.pipeline_config import pipeline_config


def get_config():
  config = pipeline_config(demo.get_config())
  config.name = 'fashion_mnist_classes'

  f = config.finetune
  f.regimes = ('linear_probe', 'full')
  f.scratch = True
  f.linear_probe_learning_rate = 1e-2  # a linear model on 32 fixed features
  f.data.train_split = 'train'
  f.data.eval_split = 'validation'
  f.data.test_split = 'test'
  f.data.validation_fraction = 0.1
  f.optimizer.learning_rate = 1e-3
  f.optimizer.encoder_learning_rate_multiplier = 0.3
  f.train.batch_size = 64
  f.train.num_epochs = 3
  f.train.eval_batch_size = 1000
  f.train.keep_checkpoints = 3

  config.baseline.c_values = (0.1, 1.0)
  config.baseline.max_iter = 200
  config.baseline.probe_features = True
  return config
