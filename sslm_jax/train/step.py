"""The one train step, generic over objectives.

`make_train_step(loss_fn, tx)` returns a pure `(state, batch) -> (state, metrics)`; `loss_fn` is
`loss(params, batch, rng) -> (loss, metrics)` with model and config already bound. Compilation
(and any device layout) is the caller's choice, so the same function serves single-device jit,
jit over a mesh and pmap.
"""

from typing import Callable

import jax
import optax

from sslm_jax.train.state import TrainState

LossFn = Callable[..., tuple[jax.Array, dict]]


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation):
  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, metrics), grads = grad_fn(state.params, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, 'loss': loss, 'grad_norm': optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
  return train_step


def jit_train_step(loss_fn: LossFn, tx: optax.GradientTransformation):
  """The step compiled for one device, the state donated (updated in place)."""
  return jax.jit(make_train_step(loss_fn, tx), donate_argnums=0)
