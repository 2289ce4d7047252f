r"""Trains the PyTorch reference VAE with the seed's hyper-parameters on sslm_jax's data.

The batches are exactly those of an `sslm_jax` run with the same --seed and batch size: the same
tfds split (`load_split`), the same per-step indices (`train_indices`) and the same resize and
scaling to [-1, 1] (`to_model_input`), transposed to NCHW. Adam with learning rate 1e-3, batch 64,
the seed objective. Evaluation matches `sslm_jax.eval.autoencoder.evaluate`: means over the whole
test split of the per-pixel MSE, the KL in nats and the objective, with z sampled.

  python -m benchmarks.pytorch_reference.train --data_name=idx_images/fashion_mnist \
    --manual_dir=/usr/share/datasets/fashion-mnist --epochs=30 --init=jax --out=/tmp/torch.json

--init=jax starts from the very weights the JAX run with that --seed starts from (converted);
--init_from_npz starts from Flax params saved by `sslm_jax.interop.save_params_npz`. --noise=jax
draws the reparameterization noise of every train step and evaluation batch exactly as that JAX
run does (its keys, `jax.random.normal`), so the two runs differ only by floating-point rounding;
--noise=torch (the default) draws it from torch's generator, seeded by --seed.
"""

import argparse
import json
import os
import platform
import time

import jax
import numpy as np
import torch

from benchmarks.pytorch_reference.model import VAE, gaussian_kl, seed_kl_term, seed_loss
from sslm_jax import runs
from sslm_jax.data import images as image_data
from sslm_jax.interop import flax_to_torch_state_dict, load_params_npz
from sslm_jax.tasks import base as task_base


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--data_name', default='fashion_mnist')
  p.add_argument('--data_dir', default='')
  p.add_argument('--manual_dir', default='')
  p.add_argument('--epochs', type=int, default=30)
  p.add_argument('--num_steps', type=int, default=0, help='> 0 overrides --epochs')
  p.add_argument('--batch_size', type=int, default=64)
  p.add_argument('--learning_rate', type=float, default=1e-3)
  p.add_argument('--kl_weight', type=float, default=1e-4)
  p.add_argument('--eval_batch_size', type=int, default=1000)
  p.add_argument('--seed', type=int, default=0, help='data order (as sslm_jax), init and noise')
  p.add_argument('--init', choices=('torch', 'jax'), default='torch',
                 help="torch: PyTorch's default init; jax: the sslm_jax run's init for --seed")
  p.add_argument('--noise', choices=('torch', 'jax'), default='torch',
                 help="torch: torch's generator; jax: the sslm_jax run's own draws for --seed")
  p.add_argument('--init_from_npz', default='', help='Flax params .npz (overrides --init)')
  p.add_argument('--out', default='', help='JSON summary path (also printed)')
  return p.parse_args(argv)


def jax_initial_state(seed: int):
  """The train state (params, rng) an sslm_jax run of the seed model starts from for `seed`."""
  config = runs.run_config('vae', 'seed')
  config.seed = seed
  return runs.setup(config, '', training=False).init_state


class JaxNoise:
  """The reparameterization noise of the sslm_jax run with `seed`, as torch tensors.

  Train step s draws from `fold_in(state.rng, s)` (sslm_jax.train.step); evaluation batch i from
  `fold_in(fold_in(PRNGKey(seed), EVAL_STREAM), i)` over batches padded to the eval batch size
  (sslm_jax.tasks.base.eval_key, sslm_jax.eval.autoencoder).
  """

  def __init__(self, seed: int, train_rng: jax.Array, latent_dim: int):
    self.train_rng = train_rng  # the run's `state.rng` (jax_initial_state)
    self.eval_rng = task_base.eval_key(seed)
    self.latent_dim = latent_dim

  def _draw(self, key, rows: int) -> torch.Tensor:
    return torch.from_numpy(np.array(jax.random.normal(key, (rows, self.latent_dim))))  # writable

  def train(self, step: int, rows: int) -> torch.Tensor:
    return self._draw(jax.random.fold_in(self.train_rng, step), rows)

  def eval(self, batch_index: int, batch_size: int, rows: int) -> torch.Tensor:
    """The first `rows` of the draw for a batch padded to `batch_size` (as the JAX eval pads)."""
    return self._draw(jax.random.fold_in(self.eval_rng, batch_index), batch_size)[:rows]


def to_torch(batch_uint8: np.ndarray, prepare) -> torch.Tensor:
  """uint8 NHWC -> float32 NCHW in [-1, 1], resized by sslm_jax's own `to_model_input`."""
  return torch.from_numpy(np.asarray(prepare(batch_uint8)).transpose(0, 3, 1, 2).copy())


@torch.no_grad()
def evaluate(model, split, prepare, batch_size: int, kl_weight: float,
             generator: torch.Generator, noise: JaxNoise | None = None) -> dict[str, float]:
  model.eval()
  totals = {'mse': 0.0, 'kl': 0.0, 'objective': 0.0}
  for i, start in enumerate(range(0, len(split), batch_size)):
    x = to_torch(split.images[start:start + batch_size], prepare)
    eps = (noise.eval(i, batch_size, len(x)) if noise else
           torch.randn((len(x), model.latent_dim), generator=generator))
    recon, mu, logvar = model(x, eps)
    mse = torch.mean((recon - x).reshape(len(x), -1) ** 2, dim=1)
    totals['mse'] += float(mse.sum())
    totals['kl'] += float(gaussian_kl(mu, logvar).sum())
    totals['objective'] += float((mse + kl_weight * seed_kl_term(mu, logvar)).sum())
  model.train()
  return {k: v / len(split) for k, v in totals.items()}


def main(argv=None) -> dict:
  args = parse_args(argv)
  torch.manual_seed(args.seed)
  train_split, test_split = (
      image_data.load_split(args.data_name, split, data_dir=args.data_dir,
                            manual_dir=args.manual_dir) for split in ('train', 'test'))
  for split, name in ((train_split, 'train'), (test_split, 'test')):
    image_data.check_compatible(split, 1, f'{args.data_name}:{name}')
  prepare = jax.jit(lambda b: image_data.to_model_input(b, 32))

  model = VAE()
  jax_start = (jax_initial_state(args.seed) if args.noise == 'jax' or
               (args.init == 'jax' and not args.init_from_npz) else None)
  if args.init_from_npz or args.init == 'jax':
    params = load_params_npz(args.init_from_npz) if args.init_from_npz else jax_start.params
    model.load_state_dict({k: torch.from_numpy(v)
                           for k, v in flax_to_torch_state_dict(params).items()})
  opt = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
  per_epoch = image_data.steps_per_epoch(len(train_split), args.batch_size)
  total = args.num_steps or args.epochs * per_epoch
  eval_rng = torch.Generator().manual_seed(args.seed + 1)
  noise = JaxNoise(args.seed, jax_start.rng, model.latent_dim) if args.noise == 'jax' else None

  started, losses, history = time.time(), [], []
  for step in range(total):
    idx = image_data.train_indices(step, num_examples=len(train_split),
                                   batch_size=args.batch_size, seed=args.seed)
    x = to_torch(train_split.images[idx], prepare)
    recon, mu, logvar = model(x, noise.train(step, len(x)) if noise else None)
    loss = seed_loss(recon, x, mu, logvar, kl_weight=args.kl_weight)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
    done = step + 1
    if done % per_epoch == 0 or done == total:
      metrics = evaluate(model, test_split, prepare, args.eval_batch_size, args.kl_weight,
                         eval_rng, noise)
      history.append({'step': done, 'train_loss': float(np.mean(losses)),
                      **{f'test_{k}': v for k, v in metrics.items()}})
      losses = []
      print(json.dumps(history[-1]), flush=True)

  summary = {**history[-1], 'steps': total, 'epochs': total / per_epoch,
             'wall_seconds': time.time() - started, 'dataset': args.data_name,
             'init': 'npz:' + args.init_from_npz if args.init_from_npz else args.init,
             'noise': args.noise,
             'args': vars(args), 'history': history, 'torch': torch.__version__,
             'machine': {'platform': platform.platform(), 'cpu_count': os.cpu_count(),
                         'torch_threads': torch.get_num_threads()}}
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump(summary, f, indent=2)
  return summary


if __name__ == '__main__':
  main()
