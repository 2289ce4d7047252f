"""The Optax optimizer a config asks for: adam (default), adamw or sgd, a learning-rate
schedule, optional global-norm gradient clipping, and for classifiers an encoder learning-rate
multiplier (0 freezes the encoder: a linear probe). `OptimizerConfig` is the `optimizer`
section (a classifier's adds `encoder_learning_rate_multiplier` and `layer_decay`:
sslm_jax/tasks/classification.py).
"""

import dataclasses

import jax
import optax

from sslm_jax.config import Checker, Section
from sslm_jax.models.transformer import EMBEDDING_PARAMS, block_index

ENCODER = 'encoder'  # the top-level parameter key of a classifier's encoder (models/heads.py)
OPTIMIZERS = ('adam', 'adamw', 'sgd')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine', 'linear')


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(Section):
  name: str = 'adam'
  learning_rate: float = 1e-3
  schedule: str = 'constant'
  warmup_steps: int = 0
  end_learning_rate_factor: float = 0.0  # cosine/linear decay to lr * this
  b1: float = 0.9
  b2: float = 0.999
  weight_decay: float = 1e-4      # adamw only
  momentum: float = 0.9           # sgd only; 0 = plain SGD
  grad_clip_norm: float = 0.0     # 0 = no clipping

  def check(self, c: Checker) -> None:
    c.choice('name', OPTIMIZERS)
    c.choice('schedule', SCHEDULES)
    c.number('learning_rate', 0, low_open=True)
    c.integer('warmup_steps', minimum=0)
    for key in ('end_learning_rate_factor', 'b1', 'b2', 'momentum'):
      c.number(key, 0, 1)
    for key in ('weight_decay', 'grad_clip_norm'):
      c.number(key, 0)


def encoder_labels(params) -> dict:
  """'encoder' for every leaf under params['encoder'], 'head' for every other leaf."""
  return {key: jax.tree.map(lambda _, k=key: ENCODER if k == ENCODER else 'head', value)
          for key, value in params.items()}


def encoder_depths(encoder_params) -> tuple[dict, int]:
  """(the depth of each leaf, the top depth): 0 for the embeddings, i + 1 for block i, the top
  (number of blocks + 1) for everything above the blocks (final norm, pretraining heads)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(encoder_params)
  names = [[str(getattr(k, 'key', k)) for k in path] for path, _ in leaves]
  blocks = [next((i for i in map(block_index, n) if i is not None), None) for n in names]
  top = max((i for i in blocks if i is not None), default=-1) + 2
  depths = [i + 1 if i is not None else 0 if set(n) & set(EMBEDDING_PARAMS) else top
            for n, i in zip(names, blocks)]
  return jax.tree_util.tree_unflatten(treedef, depths), top


def scale_encoder_layers(layer_decay: float) -> optax.GradientTransformation:
  """Scales each encoder update by layer_decay ** (top depth - its depth) (`encoder_depths`);
  the head's stay as they are. After an elementwise optimizer this is that optimizer at those
  learning rates (weight decay included, as with the encoder multiplier)."""
  def scales(updates):
    depths, top = encoder_depths(updates[ENCODER])
    return {key: jax.tree.map(lambda d: layer_decay ** (top - d), depths) if key == ENCODER else
            jax.tree.map(lambda _: 1.0, value) for key, value in updates.items()}

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * s, updates, scales(updates)), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def learning_rate_schedule(config, total_steps: int) -> optax.Schedule:
  lr, warmup = config.learning_rate, config.warmup_steps
  end = lr * config.end_learning_rate_factor
  decay_steps = max(total_steps - warmup, 1)
  if config.schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1), end)
  decays = {
      'constant': lambda: optax.constant_schedule(lr),
      'cosine': lambda: optax.cosine_decay_schedule(lr, decay_steps,
                                                    alpha=config.end_learning_rate_factor),
      'linear': lambda: optax.linear_schedule(lr, end, decay_steps)}
  if config.schedule not in decays:
    raise ValueError(f'optimizer.schedule={config.schedule!r}; allowed: {SCHEDULES}')
  schedule = decays[config.schedule]()
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), schedule], [warmup])
  return schedule


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  """`config` is the `optimizer` section of a run config."""
  lr = learning_rate_schedule(config, total_steps)
  optimizers = {
      'adam': lambda: optax.adam(lr, b1=config.b1, b2=config.b2),
      'adamw': lambda: optax.adamw(lr, b1=config.b1, b2=config.b2,
                                   weight_decay=config.weight_decay),
      'sgd': lambda: optax.sgd(lr, momentum=config.momentum or None)}
  if config.name not in optimizers:
    raise ValueError(f'optimizer.name={config.name!r}; allowed: {OPTIMIZERS}')
  tx = optimizers[config.name]()
  multiplier = config.get('encoder_learning_rate_multiplier', 1.0)
  if multiplier != 1.0:
    # set_to_zero also stops weight decay, so a frozen encoder stays bit for bit as loaded.
    encoder_tx = optax.set_to_zero() if multiplier == 0 else \
        optax.chain(tx, optax.scale(multiplier))
    tx = optax.multi_transform({ENCODER: encoder_tx, 'head': tx}, encoder_labels)
  layer_decay = config.get('layer_decay', 1.0)
  if layer_decay != 1.0:
    # ELECTRA's fine-tuning (Clark et al. 2020): each layer's rate layer_decay times the one
    # above it, so the layers nearest the input, the most general, move least.
    tx = optax.chain(tx, scale_encoder_layers(layer_decay))
  if config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx
