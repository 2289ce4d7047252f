"""Split-level metrics of a sentence VAE, from the per-sentence statistics of
`sslm_jax.objectives.text_vae.text_vae_eval_stats` (numpy, every real row of a split).

- Active units (Burda et al. 2016): latent dimensions whose posterior mean varies across the
  split, Var_x(E_q[z_d | x]) > 0.01.
- Mutual information I_q(x; z) under the aggregate posterior q(z) = mean_x q(z | x) (Hoffman &
  Johnson 2016; estimated as He et al. 2019): E_x E_{q(z|x)}[log q(z | x) - log q(z)], the
  aggregate posterior a mixture over the whole split, one sample per sentence. At most log N.
"""

import math

import numpy as np

ACTIVE_THRESHOLD = 0.01


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
  top = np.max(x, axis=axis, keepdims=True)
  return np.squeeze(top, axis) + np.log(np.exp(x - top).sum(axis=axis))


def active_units(means: np.ndarray, threshold: float = ACTIVE_THRESHOLD) -> int:
  """Dimensions of (N, latent) posterior means with variance over the N sentences > threshold."""
  return int((np.var(np.asarray(means, np.float64), axis=0) > threshold).sum())


def mutual_information(means: np.ndarray, logvars: np.ndarray, seed: int = 0,
                       chunk: int = 256) -> float:
  """I_q(x; z) in nats from (N, latent) posterior parameters (see the module docstring)."""
  means, logvars = np.asarray(means, np.float64), np.asarray(logvars, np.float64)
  n, d = means.shape
  rng = np.random.default_rng(seed)
  eps = rng.standard_normal(means.shape)
  z = means + np.exp(0.5 * logvars) * eps
  inv_var = np.exp(-logvars)
  log_norm = -0.5 * (d * math.log(2 * math.pi) + logvars.sum(-1))  # (N,)
  # log q(z_i | x_i) of the same samples (not the closed-form entropy): the two terms' noise
  # cancels, and identical posteriors give exactly 0.
  log_q_own = log_norm - 0.5 * np.square(eps).sum(-1)
  log_qz = []
  for start in range(0, n, chunk):
    zi = z[start:start + chunk, None, :]  # (c, 1, d) against every posterior (N, d)
    log_q = log_norm[None] - 0.5 * (np.square(zi - means[None]) * inv_var[None]).sum(-1)
    log_qz.append(_logsumexp(log_q, axis=1) - math.log(n))
  return float(np.mean(log_q_own - np.concatenate(log_qz)))


def summarize(stats: dict[str, np.ndarray], *, seed: int = 0) -> dict[str, float]:
  """Means per sentence (nats), perplexities from the bounds (per predicted token), active
  units and mutual information of a split's per-row statistics."""
  targets = float(stats['targets'].sum())
  n = len(stats['targets'])
  result = {k: float(np.mean(stats[k])) for k in ('elbo_nll', 'iw_nll', 'recon', 'kl',
                                                  'mc_elbo_nll')}
  result.update(
      loss=result['elbo_nll'] * n / max(targets, 1.0),  # nats per token, the training loss at beta 1
      elbo_perplexity=math.exp(min(result['elbo_nll'] * n / max(targets, 1.0), 80.0)),
      iw_perplexity=math.exp(min(result['iw_nll'] * n / max(targets, 1.0), 80.0)),
      active_units=active_units(stats['mean']),
      mutual_info=mutual_information(stats['mean'], stats['logvar'], seed=seed),
      sentences=n, tokens_per_sentence=targets / max(n, 1))
  return result
