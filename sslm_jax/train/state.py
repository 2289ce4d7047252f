"""The training state: a pytree of arrays, passed into the step and returned by it."""

import flax.struct
import jax
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # int32 scalar: updates applied so far
  params: dict
  opt_state: optax.OptState
  rng: jax.Array         # base key; step s uses fold_in(rng, s)


def create_train_state(params, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                    opt_state=tx.init(params), rng=rng)
