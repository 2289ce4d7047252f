"""Big vocabularies and long rows: the chunked LM loss and rematerialised blocks compute what the
plain ones do, from less memory (XLA's compiled memory analysis)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_negligible_gradient, is_zero_gradient_key, rel_err
from sslm_jax import runs
from sslm_jax.models import attention, build_model, transformer
from sslm_jax.objectives import bind_loss
from sslm_jax.objectives.lm import Vocab


def lm_setup(objective='causal_lm', *, vocab=512, length=12, batch=2, chunk=0, remat='none',
             layers=1, mlp=64, dropout=0.0, init=True):
  """(loss(params, batch, rng), params, batch) of a tiny GPT (causal_lm) or BERT (mlm); params
  None unless `init`."""
  c = runs.run_config('gpt' if objective == 'causal_lm' else 'bert', objective)
  m = c.model
  m.num_layers, m.num_heads, m.embed_dim, m.mlp_dim, m.max_len = layers, 2, 32, mlp, length
  m.dropout_rate, m.remat = dropout, remat
  c.objective.logits_chunk_size = chunk
  model = build_model(m, vocab_size=vocab)
  loss = bind_loss(model, c.objective, vocab=Vocab(size=vocab, pad_id=0, bos_id=1, eos_id=2,
                                                   mask_id=3, first_normal_id=4))
  tokens = jax.random.randint(jax.random.key(0), (batch, length + 1), 4, vocab)
  if objective == 'causal_lm':
    rows = {'tokens': tokens}
  else:  # one document a row, the second padded after 8 tokens
    rows = {'tokens': tokens[:, :-1], 'mask': jnp.arange(length)[None] < jnp.array([[length], [8]])}
  params = jax.jit(model.init)(jax.random.key(1), rows['tokens'][:, :length])['params'] \
      if init else None
  return loss, params, rows


def compiled_grad(loss, params, rows):
  """The jitted (loss, metrics), grads of `loss`, compiled for these arguments."""
  fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
  return fn.lower(params, rows, jax.random.key(2)).compile()


def assert_same(a, b, what):
  """Loss and metrics to 1e-6 relative, each gradient tensor to 1e-5 (||a - b|| / ||b||, as the
  parity tests): the two computations differ only in float32 rounding (see the callers). The
  key biases' exact gradient is zero (`conftest.is_zero_gradient_key`): both must be below
  1e-6 of the largest gradient's norm instead."""
  (loss_a, metrics_a), grads_a = a
  (loss_b, metrics_b), grads_b = b
  for k in ('loss', *metrics_a):
    x, y = (loss_a, loss_b) if k == 'loss' else (metrics_a[k], metrics_b[k])
    assert rel_err(x, y) < 1e-6, f'{what}: {k} {x} vs {y}'
  flat_a, flat_b = (dict(jax.tree_util.tree_flatten_with_path(g)[0]) for g in (grads_a, grads_b))
  scale = max(np.linalg.norm(g) for g in flat_b.values())
  positions = runs.run_config('gpt').model.positions  # lm_setup's models keep the default
  errors = {}
  for path, g in flat_b.items():
    name = '.'.join(str(getattr(k, 'key', k)) for k in path)
    if is_zero_gradient_key(name, positions):
      for gradient in (g, flat_a[path]):
        assert_negligible_gradient(gradient, scale, f'{what}: {name}')
    else:
      errors[name] = rel_err(flat_a[path], g)
  assert errors and max(errors.values()) < 1e-5, f'{what}: gradient relative errors {errors}'


def test_config_choices_are_the_models():
  """The config's choices are the models' own: each is accepted, and a wrong one is refused
  naming exactly them."""
  c = runs.run_config('gpt')
  for key, choices in (('attention_impl', attention.ATTENTION_IMPLS),
                       ('remat', transformer.REMATS)):
    for choice in choices:
      if choice != 'cudnn':  # needs a GPU; its refusal elsewhere is tested in test_attention.py
        c.model[key] = choice
        assert not runs.problems(c), (key, choice)
    c.model[key] = 'nope'
    assert f"allowed: {', '.join(map(repr, choices))}" in '\n'.join(runs.problems(c))
    c.model[key] = choices[0]
  for name in transformer.REMAT_POLICIES:
    assert callable(getattr(jax.checkpoint_policies, name)), name


def test_chunked_loss_and_remat_compute_the_plain_step_from_less_memory():
  """Vocabulary 4096 (a 32-wide model): the logits dominate the step's memory. The loss in
  chunks of 24 of the 64 positions (the last one padded) and the block recomputed in the
  backward pass, with dropout (the same masks are redrawn): same loss, accuracy and gradients
  (each position's logits go through the same operations; only XLA's blocking of the output
  matmul over other row counts, the order of the sums and its fusion of the recomputed ops
  differ), and XLA's temporary buffers of the compiled step at most 60% of the plain one's
  (measured: 11.7 MB -> 5.2 MB with chunks of 16 and no remat)."""
  setup = dict(vocab=4096, length=64, batch=4, dropout=0.1)
  loss, params, rows = lm_setup(**setup)
  plain = compiled_grad(loss, params, rows)
  lean = compiled_grad(lm_setup(**setup, chunk=24, remat='block', init=False)[0], params, rows)
  args = (params, rows, jax.random.key(2))
  assert_same(lean(*args), plain(*args), 'chunks of 24 and remat block')
  temp = {name: f.memory_analysis().temp_size_in_bytes for name, f in
          (('plain', plain), ('chunked+remat', lean))}
  assert temp['chunked+remat'] < 0.6 * temp['plain'], temp


def test_chunked_masked_lm_loss_equals_the_whole():
  """The masked LM (its own head, a padded row): the loss and metrics of unchunked, to rounding
  (the gradients through the chunks are the test above's)."""
  loss, params, rows = lm_setup('mlm')
  chunked = lm_setup('mlm', chunk=5, init=False)[0]
  run = lambda f: jax.jit(f)(params, rows, jax.random.key(2))  # noqa: E731
  (loss_a, metrics_a), (loss_b, metrics_b) = run(chunked), run(loss)
  assert rel_err(loss_a, loss_b) < 1e-6, (loss_a, loss_b)
  for k in metrics_a:
    assert rel_err(metrics_a[k], metrics_b[k]) < 1e-6, (k, metrics_a[k], metrics_b[k])


def test_remat_choices_build_and_are_checked():
  """A named policy builds the same model (the gradient's shapes, traced without compiling)."""
  policy_loss, params, rows = lm_setup(remat='dots_saveable')
  shapes = jax.eval_shape(jax.grad(lambda p: policy_loss(p, rows, jax.random.key(2))[0]), params)
  assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, params)
  with pytest.raises(ValueError, match='remat must be one of'):
    transformer.GPT(vocab_size=8, num_layers=1, num_heads=1, embed_dim=8, mlp_dim=8, max_len=4,
                    remat='sometimes').init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  c = runs.run_config('gpt')
  c.model.remat, c.objective.logits_chunk_size = 'sometimes', -1
  problems = '\n'.join(runs.problems(c))
  assert "model.remat='sometimes' is invalid" in problems and 'nothing_saveable' in problems
  assert 'objective.logits_chunk_size=-1 is invalid' in problems


@pytest.mark.gpu
def test_remat_needs_less_gpu_memory():
  """On a GPU (whose scheduler keeps the recomputation in the backward pass; XLA's CPU scheduler
  does not: 303 vs 296 MB for 8 blocks here) a rematerialised 8-block model's compiled step
  holds at most 60% of the plain one's temporary buffers."""
  setup = dict(vocab=64, length=256, batch=8, layers=8, mlp=1024)
  plain = compiled_grad(*lm_setup(**setup))
  rematted = compiled_grad(*lm_setup(**setup, remat='block'))
  temp = {name: f.memory_analysis().temp_size_in_bytes for name, f in
          (('plain', plain), ('block', rematted))}
  assert temp['block'] < 0.6 * temp['plain'], temp
