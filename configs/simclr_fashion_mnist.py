"""SimCLR on the seed encoder with real Fashion-MNIST (Debian's dataset-fashion-mnist).

The encoder of configs/demo.py (stride-2 convolutions to 256 features: the representation h),
a projection head 256 -> 256 -> 64 that only the loss reads, and NT-Xent at temperature 0.5
over two views of each image: random resized crops (30-100% of the area, aspect 3/4 to 4/3)
flipped half the time, their brightness and contrast each scaled by a factor in [0.6, 1.4] (the
grey-image part of SimCLR's colour distortion), drawn on the device inside the step. 256 images
(512 views) a step, Adam 1e-3.

  sslm-jax train --config configs/simclr_fashion_mnist.py --workdir runs/simclr_fashion_mnist
"""

from sslm_jax.configs import demo
from sslm_jax.runs import reshape


def get_config():
  config = reshape(demo.get_config(), 'simclr', 'simclr')
  config.model.projection_dim = 64
  config.objective.temperature = 0.5
  config.objective.crop_min_scale = 0.3
  # The pipeline's logistic regression on h (test macro-F1): 0.799 without, 0.853 with (README).
  config.objective.brightness = 0.4
  config.objective.contrast = 0.4
  config.train.batch_size = 256
  config.train.num_epochs = 4
  config.train.eval_batch_size = 500
  config.train.checkpoint_every_steps = 0
  return config
