"""The one train step, generic over objectives.

`make_train_step(loss_fn, tx)` returns a pure `(state, batch) -> (state, metrics)`; `loss_fn` is
`loss(params, batch, rng) -> (loss, metrics)` with model and config already bound. Compilation
(and any device layout) is the caller's choice, so the same function serves single-device jit,
jit over a mesh and pmap (`sslm_jax/train/parallel.py`, whose strategies make and compile it);
the step knows of devices only the named axis it may be asked to average over.

Mixed precision is the model's compute dtype (`model.dtype`); parameters, gradients and the
optimizer state stay float32 (Flax's param_dtype), and the step casts loss and metrics to float32.

Randomness: a step draws from `fold_in(state.rng, state.step)`. When the step splits its batch
into shards (micro-batches, and under pmap the replicas' parts), shard j draws from
`fold_in(key, j)`, numbered micro-batch-major (j = micro * replicas + replica), so pmap over N
devices computes what one device computes with `grad_accum_steps=N`.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from sslm_jax.train.state import TrainState

LossFn = Callable[..., tuple[jax.Array, dict]]


def _float32_outputs(loss_fn: LossFn) -> LossFn:
  """`loss_fn` with loss and metrics in float32 (a no-op when they already are)."""
  def loss32(params, batch, rng):
    loss, metrics = loss_fn(params, batch, rng)
    return (jnp.asarray(loss, jnp.float32),
            jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics))
  return loss32


def split_micro_batches(batch: dict, k: int) -> dict:
  """Leading axis B -> (k, B // k); micro-batch i is rows i, i + k, i + 2k, ...

  Strided rather than contiguous so that a batch sharded on its leading axis splits without
  moving rows between devices.
  """
  rows = {x.shape[0] for x in jax.tree.leaves(batch)}
  if len(rows) != 1 or next(iter(rows)) % k:
    raise ValueError(f'a batch with leading axes {sorted(rows)} does not split into '
                     f'grad_accum_steps={k} micro-batches; allowed: one leading size, a '
                     f'multiple of {k}')
  return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1),
                      batch)


def _averaged_grads(grad_fn, params, batch, rng, k: int, axis_name: str | None):
  """((loss, metrics), grads) averaged over k micro-batches and, with `axis_name`, replicas."""
  replicas = 1 if axis_name is None else jax.lax.axis_size(axis_name)
  replica = 0 if axis_name is None else jax.lax.axis_index(axis_name)

  def shard_rng(i):
    return rng if k * replicas == 1 else jax.random.fold_in(rng, i * replicas + replica)

  if k == 1:
    out = grad_fn(params, batch, shard_rng(0))
  else:
    micro = split_micro_batches(batch, k)

    def accumulate(total, i_and_batch):
      i, micro_batch = i_and_batch
      return jax.tree.map(jnp.add, total, grad_fn(params, micro_batch, shard_rng(i))), None

    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(grad_fn, params, first, rng))
    total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(k), micro))
    # Equal-sized micro-batches: the mean of their means is the mean over the whole batch.
    out = jax.tree.map(lambda x: x / k, total)
  if axis_name is not None:
    out = jax.lax.pmean(out, axis_name)
  return out


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *,
                    grad_accum_steps: int = 1, axis_name: str | None = None):
  """The pure step `(state, batch) -> (state, metrics)`.

  Args:
    loss_fn: `loss(params, batch, rng) -> (loss, metrics)`, metrics a dict of scalars.
    tx: the optimizer.
    grad_accum_steps: k > 1 splits the batch's leading axis into k micro-batches (a `lax.scan`),
      averaging gradients and metrics: one update from k times less activation memory.
    axis_name: a named axis the step runs over (e.g. `jax.pmap(..., axis_name=...)`'s): gradients,
      loss and metrics are then averaged over it (`lax.pmean`). None: no such axis (under jit,
      sharding decides the all-reduce).
  """
  if not isinstance(grad_accum_steps, int) or isinstance(grad_accum_steps, bool) or \
      grad_accum_steps < 1:
    raise ValueError(f'grad_accum_steps={grad_accum_steps!r}; allowed: an integer >= 1')
  grad_fn = jax.value_and_grad(_float32_outputs(loss_fn), has_aux=True)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    if grad_accum_steps == 1 and axis_name is None:
      (loss, metrics), grads = grad_fn(state.params, batch, rng)
    else:
      (loss, metrics), grads = _averaged_grads(grad_fn, state.params, batch, rng,
                                               grad_accum_steps, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, 'loss': loss, 'grad_norm': optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def jit_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *,
                   grad_accum_steps: int = 1):
  """The step compiled for one device, the state donated (updated in place)."""
  return jax.jit(make_train_step(loss_fn, tx, grad_accum_steps=grad_accum_steps),
                 donate_argnums=0)
