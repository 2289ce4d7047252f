"""The Optax optimizer a config asks for: adam (default), adamw or sgd, a learning-rate
schedule, optional global-norm gradient clipping, and for classifiers an encoder learning-rate
multiplier (0 freezes the encoder: a linear probe)."""

import jax
import optax

ENCODER = 'encoder'  # the top-level parameter key of a classifier's encoder (models/heads.py)


def encoder_labels(params) -> dict:
  """'encoder' for every leaf under params['encoder'], 'head' for every other leaf."""
  return {key: jax.tree.map(lambda _, k=key: ENCODER if k == ENCODER else 'head', value)
          for key, value in params.items()}


def learning_rate_schedule(config, total_steps: int) -> optax.Schedule:
  lr, warmup = config.learning_rate, config.warmup_steps
  end = lr * config.end_learning_rate_factor
  decay_steps = max(total_steps - warmup, 1)
  if config.schedule == 'constant':
    schedule = optax.constant_schedule(lr)
  elif config.schedule == 'cosine':
    schedule = optax.cosine_decay_schedule(lr, decay_steps, alpha=config.end_learning_rate_factor)
  elif config.schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1), end)
  elif config.schedule == 'linear':
    schedule = optax.linear_schedule(lr, end, decay_steps)
  else:
    raise ValueError(f'optimizer.schedule={config.schedule!r}')
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), schedule], [warmup])
  return schedule


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  """`config` is the `optimizer` section of a run config."""
  lr = learning_rate_schedule(config, total_steps)
  if config.name == 'adam':
    tx = optax.adam(lr, b1=config.b1, b2=config.b2)
  elif config.name == 'adamw':
    tx = optax.adamw(lr, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay)
  elif config.name == 'sgd':
    tx = optax.sgd(lr, momentum=config.momentum or None)
  else:
    raise ValueError(f'optimizer.name={config.name!r}')
  multiplier = config.encoder_learning_rate_multiplier
  if multiplier != 1.0:
    # set_to_zero also stops weight decay, so a frozen encoder stays bit for bit as loaded.
    encoder_tx = optax.set_to_zero() if multiplier == 0 else \
        optax.chain(tx, optax.scale(multiplier))
    tx = optax.multi_transform({ENCODER: encoder_tx, 'head': tx}, encoder_labels)
  if config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx
