"""The run configuration: defaults in one place, and the checks that run before any work.

Config files in `configs/` start from `base_config()` (a locked ConfigDict: a misspelled key is an
error, not a new key) and change what their experiment needs. `validate` names the key, the value
and what is allowed for every problem it finds, all at once.
"""

import json
from typing import Any

import ml_collections

IMAGE_MODELS = ('vae', 'ae', 'simclr')
TEXT_MODELS = ('gpt', 'bert', 'text_vae', 'electra')
MODELS = IMAGE_MODELS + TEXT_MODELS
OBJECTIVES_FOR_MODEL = {'vae': ('seed', 'elbo', 'classification'),
                        'ae': ('mse', 'classification'),
                        'simclr': ('simclr', 'classification'),
                        'gpt': ('causal_lm', 'denoising', 'classification'),
                        'bert': ('mlm', 'simcse', 'classification'),
                        'electra': ('electra', 'simcse', 'classification'),
                        'text_vae': ('text_vae', 'classification')}
POOLINGS_FOR_MODEL = {'gpt': ('mean', 'last'), 'bert': ('mean', 'cls', 'last'),
                      'electra': ('mean', 'cls', 'last'),  # the discriminator's hidden states
                      'vae': ('mean',), 'ae': ('mean',),  # images: the encoder's posterior mean
                      'simclr': ('mean',),  # the encoder's output h
                      'text_vae': ('mean',)}  # the sentence's posterior mean
TEXT_ENCODERS = ('transformer', 'gru')  # text_vae: sslm_jax/models/text_vae.py
LATENT_CONDITIONINGS = ('embedding', 'prefix', 'both', 'none')
KL_SCHEDULES = ('constant', 'linear', 'logistic', 'cyclical')
LONG_DOCUMENTS = ('drop', 'truncate')
CLASS_WEIGHTS = ('none', 'balanced')
POSITIONS = ('learned', 'rotary')
TOKENIZER_TYPES = ('unigram', 'bpe')
NORMALIZATIONS = ('NFKC', 'NFC', 'NFKD', 'NFD', '')
PARALLEL_MODES = ('jit', 'pmap')
LIKELIHOODS = ('gaussian', 'bernoulli')
OPTIMIZERS = ('adam', 'adamw', 'sgd')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine', 'linear')
CONV_TRANSPOSE_IMPLS = ('col2im', 'xla')  # sslm_jax/models/layers.py implements them
CONV_IMPLS = ('auto', 'xla', 'onednn')  # sslm_jax/kernels/onednn_conv.py
DTYPES = ('float32', 'bfloat16')


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and what is allowed."""


def base_config() -> ml_collections.ConfigDict:
  """The seed's hyper-parameters (seed-reference.md): batch 64, Adam 1e-3, 30 epochs, latent 32."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = 'vae'
  c.model.latent_dim = 32
  c.model.input_size = 32            # images are resized to this square size
  c.model.channels = 1
  c.model.encoder_features = (64, 128, 256)  # stride-2 convolutions
  c.model.encoder_out_features = 256         # the final valid convolution to 1x1
  c.model.decoder_hidden = (256, 128, 64)    # dense layers after z
  c.model.decoder_base_features = 64         # channels of the unflattened map
  c.model.decoder_features = (128, 64)       # stride-2 transposed convs before the last one
  c.model.conv_impl = 'auto'         # oneDNN convolutions where built (sslm_jax/kernels), else XLA
  c.model.conv_transpose_impl = 'col2im'  # the decoder's XLA formulation (when not oneDNN)
  c.model.dtype = 'float32'          # compute dtype; parameters and optimizer state stay float32
  # Transformers (gpt, bert); the vocabulary size is the tokenizer's (text.vocab_size).
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.embed_dim = 256
  c.model.mlp_dim = 1024
  c.model.max_len = 128              # longest input; >= text.seq_len (2 * seq_len + 1 denoising)
  c.model.dropout_rate = 0.1
  c.model.attention_dropout_rate = 0.0
  c.model.positions = 'learned'
  c.model.tie_embeddings = True
  # text_vae: the Transformer keys above size the decoder (and the encoder's width), latent_dim
  # the posterior (sslm_jax/models/text_vae.py).
  c.model.encoder_type = 'transformer'  # or 'gru' (bidirectional, embed_dim units a direction)
  c.model.encoder_layers = 2
  c.model.latent_conditioning = 'both'  # z added to every input embedding and/or as a prefix
  c.model.latent_prefix_len = 1         # prefix vectors ('prefix', 'both')

  c.objective = ml_collections.ConfigDict()
  c.objective.name = 'seed'          # seed: MSE + kl_weight * mean(mu^2 + var - 1 - logvar)
  c.objective.kl_weight = 1e-4
  c.objective.beta = 1.0             # elbo: recon_nll + beta * KL
  c.objective.likelihood = 'bernoulli'
  c.objective.likelihood_scale = 0.1  # std of the gaussian likelihood, in [-1, 1] pixel units
  c.objective.mask_rate = 0.15       # mlm: tokens chosen; denoising: noisy tokens masked
  c.objective.mask_token_fraction = 0.8    # mlm: chosen tokens that become [MASK]
  c.objective.random_token_fraction = 0.1  # mlm: chosen tokens that become a random token
  c.objective.deletion_rate = 0.1    # denoising: noisy tokens deleted
  c.objective.class_weights = 'none'  # classification: 'balanced' = n / (classes * class count)
  c.objective.label_smoothing = 0.0  # classification

  c.data = ml_collections.ConfigDict()
  c.data.name = 'fashion_mnist'      # any tfds image dataset; idx_images/<name> for local files
  c.data.data_dir = ''               # '' = tfds' default (~/tensorflow_datasets)
  c.data.manual_dir = ''             # local files for builders that read a manual dir
  c.data.train_split = 'train'
  c.data.eval_split = 'test'         # evaluated during training
  c.data.test_split = ''             # also evaluated at the end when set (e.g. eval on validation)
  c.data.image_key = 'image'
  c.data.text_key = 'text'
  c.data.label_key = 'label'         # classification: a ClassLabel feature
  c.data.validation_fraction = 0.0   # classification: > 0 carves data.eval_split out of
  c.data.split_seed = 0              # data.train_split, stratified by class, with this seed

  c.text = ml_collections.ConfigDict()  # text runs: cleaning, tokenizer, sequence layout
  c.text.seq_len = 128
  c.text.vocab_size = 8000
  c.text.tokenizer_type = 'unigram'
  c.text.tokenizer_path = ''         # '' = train one on the train split, saved in the workdir
  c.text.normalization = 'NFKC'
  c.text.remove_symbols = ''         # characters deleted by the cleaner
  c.text.lowercase = False
  c.text.remove_stopwords = False    # the seed's option; off for language modelling
  c.text.num_samples = 4             # gpt: generated samples written at each evaluation
  c.text.sample_prompt = ''

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adam'
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = 'constant'
  c.optimizer.warmup_steps = 0
  c.optimizer.end_learning_rate_factor = 0.0  # cosine/linear decay to lr * this
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.weight_decay = 1e-4    # adamw only
  c.optimizer.momentum = 0.9         # sgd only; 0 = plain SGD
  c.optimizer.grad_clip_norm = 0.0   # 0 = no clipping
  # classification: the encoder's learning rate is learning_rate * this; 0 = linear probe
  # (encoder frozen: no updates, no gradients, no dropout)
  c.optimizer.encoder_learning_rate_multiplier = 1.0

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64
  c.train.num_epochs = 30
  c.train.num_steps = 0              # > 0 overrides num_epochs
  c.train.eval_batch_size = 1000
  c.train.log_every_steps = 100
  c.train.eval_every_steps = 0       # 0 = once an epoch
  c.train.checkpoint_every_steps = 0  # 0 = once an epoch; always at the end
  c.train.keep_checkpoints = 3
  c.train.async_checkpoints = True
  c.train.num_pictures = 64
  c.train.progress_bar = True
  c.train.grad_accum_steps = 1       # micro-batches a step; batch_size is the whole step's

  c.classifier = ml_collections.ConfigDict()  # objective 'classification': a head on the encoder
  c.classifier.init_from = ''        # workdir of a pretraining run of this model ('' = scratch)
  c.classifier.init_step = 0         # its checkpoint (0 = the newest)
  c.classifier.pooling = 'mean'      # text: 'mean', 'last', 'cls' (bert); images: the mean code
  c.classifier.dropout_rate = 0.0    # on the pooled features

  # Sentence VAE (model 'text_vae', objective 'text_vae'): remedies against posterior collapse,
  # evaluation and the causal-LM baseline (sslm_jax/objectives/text_vae.py, tasks/text_vae.py).
  c.text_vae = ml_collections.ConfigDict()
  c.text_vae.kl_schedule = 'constant'  # KL weight: 'constant' 1, or 0 -> 1 'linear', 'logistic',
  c.text_vae.kl_warmup_steps = 0     # 'cyclical' over this many steps (1 from then on)
  c.text_vae.kl_cycles = 1           # cyclical: ramps within kl_warmup_steps
  c.text_vae.kl_cycle_ratio = 0.5    # cyclical: the fraction of a cycle spent ramping up
  c.text_vae.word_dropout = 0.0      # decoder input tokens replaced by [MASK]
  c.text_vae.free_bits = 0.0         # nats a latent dimension may use for free (batch mean)
  c.text_vae.target_kl = 0.0         # or: nats a sentence may use for free (batch mean)
  c.text_vae.autoencoder = False     # z = posterior mean, no KL: trains an encoder warm start
  c.text_vae.encoder_init_from = ''  # workdir of a text_vae run whose encoder this one starts from
  c.text_vae.long_documents = 'drop'  # documents over text.seq_len tokens: 'drop' or 'truncate'
  c.text_vae.iw_samples = 100        # importance samples for the bound on data.test_split
  c.text_vae.eval_iw_samples = 10    # ... on the other splits evaluated
  c.text_vae.baseline_workdir = ''   # a causal LM run evaluated on the same sentences (lm_nll)

  c.parallel = ml_collections.ConfigDict()
  c.parallel.mode = 'jit'            # jit over a device mesh, or pmap (maintenance mode in JAX)
  c.parallel.mesh_data = -1          # -1 = every device not used by fsdp
  c.parallel.mesh_fsdp = 1           # > 1 shards parameters and optimizer state
  c.parallel.coordinator_address = ''  # many hosts: host:port of process 0
  c.parallel.num_processes = 1
  c.parallel.process_id = 0

  # Replaced-token detection and contrastive learning (objectives/electra.py, contrastive.py).
  c.model.generator_fraction = 0.25  # electra: generator heads (so width, MLP) / discriminator's
  c.model.projection_dim = 64        # simclr: projection head output (hidden: encoder_out_features)
  c.objective.discriminator_weight = 50.0  # electra: generator MLM + this * replaced-token BCE
  c.objective.temperature = 0.05     # simcse (InfoNCE), simclr (NT-Xent)
  c.objective.crop_min_scale = 0.3   # simclr: smallest crop of a view, a fraction of the area
  c.train.init_from = ''             # workdir of a run of this model whose newest parameters this
                                     # one starts from (classifiers: classifier.init_from)

  c.lock()
  return c


def _flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in d.items():
    path = f'{prefix}{key}'
    if isinstance(value, dict):
      out.update(_flatten(value, path + '.'))
    else:
      out[path] = value
  return out


def _all_ints(*values) -> bool:
  return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _all_floats(*values) -> bool:
  return all(isinstance(v, float) for v in values)


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Raises ConfigError listing every problem; returns the config when it is usable."""
  found = problems(config)
  if found:
    raise ConfigError('invalid config:\n  ' + '\n  '.join(found))
  return config


def problems(config: ml_collections.ConfigDict) -> list[str]:
  """Every problem of a run config, one message each (empty when it is usable)."""
  problems = []
  reference = _flatten(base_config().to_dict())
  given = _flatten(config.to_dict())
  for key in sorted(set(given) - set(reference)):
    problems.append(f'unknown key {key!r}; known keys under it: '
                    f'{sorted(k for k in reference if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0])}')
  for key in sorted(set(reference) - set(given)):
    problems.append(f'missing key {key!r}')

  def check(ok: bool, key: str, allowed: str):
    if not ok:
      problems.append(f'{key}={given.get(key)!r} is invalid; allowed: {allowed}')

  def choice(key: str, options):
    check(given.get(key) in options, key, ', '.join(map(repr, options)))

  def positive_int(key: str, minimum: int = 1):
    value = given.get(key)
    check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum, key,
          f'an integer >= {minimum}')

  def int_tuple(key: str):
    value = given.get(key)
    check(isinstance(value, (tuple, list)) and len(value) > 0 and
          all(isinstance(v, int) and v >= 1 for v in value), key,
          'a non-empty tuple of positive integers')

  positive_int('seed', minimum=0)
  m, o, d, opt, t = (config.model, config.objective, config.data, config.optimizer,
                     config.train)
  choice('model.name', MODELS)
  choice('model.conv_transpose_impl', CONV_TRANSPOSE_IMPLS)
  choice('model.conv_impl', CONV_IMPLS)
  if m.get('conv_impl') == 'onednn':
    from sslm_jax.kernels import onednn_conv  # imports jax, which only this choice needs
    reason = onednn_conv.unavailable_reason()
    check(reason is None, 'model.conv_impl', f"'auto' or 'xla' here ({reason})")
  choice('model.dtype', DTYPES)
  for key in ('model.latent_dim', 'model.input_size', 'model.channels',
              'model.encoder_out_features', 'model.decoder_base_features'):
    positive_int(key)
  for key in ('model.encoder_features', 'model.decoder_hidden', 'model.decoder_features'):
    int_tuple(key)
  if m.name in IMAGE_MODELS and isinstance(m.input_size, int) and m.input_size >= 1:
    for key, n_stride2 in (('model.encoder_features', len(m.encoder_features)),
                           ('model.decoder_features', len(m.decoder_features) + 1)):
      check(m.input_size % (2 ** n_stride2) == 0, 'model.input_size',
            f'a multiple of 2**{n_stride2} (the {n_stride2} stride-2 layers of {key})')
  for key in ('model.num_layers', 'model.num_heads', 'model.embed_dim', 'model.mlp_dim',
              'model.max_len', 'text.seq_len'):
    positive_int(key)
  choice('model.positions', POSITIONS)
  check(isinstance(m.tie_embeddings, bool), 'model.tie_embeddings', 'True or False')
  for key in ('model.dropout_rate', 'model.attention_dropout_rate'):
    check(isinstance(given.get(key), float) and 0 <= given.get(key) < 1, key, 'a float in [0, 1)')
  if m.name in TEXT_MODELS and _all_ints(m.embed_dim, m.num_heads, m.max_len, config.text.seq_len):
    head_dim = m.embed_dim // max(m.num_heads, 1)
    check(m.embed_dim % max(m.num_heads, 1) == 0, 'model.embed_dim',
          f'a multiple of model.num_heads={m.num_heads}')
    check(m.positions != 'rotary' or head_dim % 2 == 0, 'model.positions',
          f"'learned', or 'rotary' with an even head size (embed_dim / num_heads = {head_dim})")
    needed = 2 * config.text.seq_len + 1 if o.name == 'denoising' else config.text.seq_len
    check(m.max_len >= needed, 'model.max_len',
          f'>= {needed} (text.seq_len={config.text.seq_len} for objective {o.name!r})')

  choice('objective.name', OBJECTIVES_FOR_MODEL.get(m.name, ()))
  for key in ('objective.mask_rate', 'objective.mask_token_fraction',
              'objective.random_token_fraction', 'objective.deletion_rate'):
    check(isinstance(given.get(key), float) and 0 <= given.get(key) < 1, key, 'a float in [0, 1)')
  if _all_floats(o.mask_token_fraction, o.random_token_fraction):
    check(o.mask_token_fraction + o.random_token_fraction <= 1, 'objective.random_token_fraction',
          f'at most 1 - objective.mask_token_fraction = {1 - o.mask_token_fraction}')
  choice('objective.likelihood', LIKELIHOODS)
  check(isinstance(o.kl_weight, float) and o.kl_weight >= 0, 'objective.kl_weight', 'a float >= 0')
  check(isinstance(o.beta, float) and o.beta >= 0, 'objective.beta', 'a float >= 0')
  check(isinstance(o.likelihood_scale, float) and o.likelihood_scale > 0,
        'objective.likelihood_scale', 'a float > 0')

  check(isinstance(d.name, str) and bool(d.name), 'data.name', 'a tfds dataset name')
  for key in ('data.train_split', 'data.eval_split', 'data.image_key', 'data.text_key'):
    check(isinstance(given.get(key), str) and bool(given.get(key)), key, 'a non-empty string')
  check(isinstance(d.test_split, str), 'data.test_split', "a split name, or '' for none")

  txt = config.text
  check(isinstance(txt.vocab_size, int) and txt.vocab_size >= 16, 'text.vocab_size',
        'an integer >= 16')
  choice('text.tokenizer_type', TOKENIZER_TYPES)
  choice('text.normalization', NORMALIZATIONS)
  for key in ('text.tokenizer_path', 'text.remove_symbols', 'text.sample_prompt'):
    check(isinstance(given.get(key), str), key, 'a string')
  for key in ('text.lowercase', 'text.remove_stopwords'):
    check(isinstance(given.get(key), bool), key, 'True or False')
  positive_int('text.num_samples', minimum=0)

  choice('optimizer.name', OPTIMIZERS)
  choice('optimizer.schedule', SCHEDULES)
  check(isinstance(opt.learning_rate, float) and opt.learning_rate > 0,
        'optimizer.learning_rate', 'a float > 0')
  positive_int('optimizer.warmup_steps', minimum=0)
  for key in ('optimizer.end_learning_rate_factor', 'optimizer.b1', 'optimizer.b2',
              'optimizer.momentum'):
    check(isinstance(given.get(key), float) and 0 <= given.get(key) <= 1, key, 'a float in [0, 1]')
  for key in ('optimizer.weight_decay', 'optimizer.grad_clip_norm'):
    check(isinstance(given.get(key), float) and given.get(key) >= 0, key, 'a float >= 0')

  for key in ('train.batch_size', 'train.eval_batch_size', 'train.log_every_steps',
              'train.keep_checkpoints', 'train.num_pictures'):
    positive_int(key)
  for key in ('train.num_epochs', 'train.num_steps', 'train.eval_every_steps',
              'train.checkpoint_every_steps'):
    positive_int(key, minimum=0)
  check(t.num_epochs > 0 or t.num_steps > 0, 'train.num_epochs',
        'at least one of train.num_epochs and train.num_steps > 0')
  positive_int('train.grad_accum_steps')
  if _all_ints(t.batch_size, t.grad_accum_steps) and t.grad_accum_steps >= 1:
    check(t.batch_size % t.grad_accum_steps == 0, 'train.batch_size',
          f'a multiple of train.grad_accum_steps={t.grad_accum_steps}')

  p = config.parallel
  choice('parallel.mode', PARALLEL_MODES)
  check(isinstance(p.mesh_data, int) and (p.mesh_data == -1 or p.mesh_data >= 1),
        'parallel.mesh_data', '-1 (all devices left) or an integer >= 1')
  positive_int('parallel.mesh_fsdp')
  check(p.mode == 'jit' or p.mesh_fsdp == 1, 'parallel.mesh_fsdp',
        "1 with parallel.mode='pmap' (pmap replicates parameters); use mode 'jit' to shard them")
  positive_int('parallel.num_processes')
  positive_int('parallel.process_id', minimum=0)
  check(isinstance(p.coordinator_address, str), 'parallel.coordinator_address',
        "'host:port' of process 0, or '' for one process")
  if _all_ints(p.num_processes, p.process_id):
    check(p.process_id < p.num_processes, 'parallel.process_id',
          f'0 .. parallel.num_processes - 1 = {p.num_processes - 1}')
    check(p.num_processes == 1 or bool(p.coordinator_address), 'parallel.coordinator_address',
          "'host:port' of process 0 when parallel.num_processes > 1")

  # Classification (objective 'classification'): a head on the model's encoder.
  cl = config.classifier
  check(isinstance(d.label_key, str) and bool(d.label_key), 'data.label_key', 'a non-empty string')
  vf = d.validation_fraction
  check(isinstance(vf, float) and 0 <= vf < 1, 'data.validation_fraction',
        'a float in [0, 1) (0 = data.eval_split is a split of the dataset)')
  positive_int('data.split_seed', minimum=0)
  if isinstance(vf, float) and vf > 0:
    check(d.eval_split != d.train_split, 'data.eval_split',
          f'a name other than data.train_split={d.train_split!r} for the split carved out of it')
    check(d.test_split not in (d.train_split, d.eval_split), 'data.test_split',
          'a split other than the training split and the one carved out of it')
  choice('objective.class_weights', CLASS_WEIGHTS)
  check(isinstance(o.label_smoothing, float) and 0 <= o.label_smoothing < 1,
        'objective.label_smoothing', 'a float in [0, 1)')
  multiplier = opt.encoder_learning_rate_multiplier
  check(isinstance(multiplier, float) and multiplier >= 0,
        'optimizer.encoder_learning_rate_multiplier', 'a float >= 0 (0 = frozen encoder)')
  check(multiplier == 1.0 or o.name == 'classification',
        'optimizer.encoder_learning_rate_multiplier',
        "1.0 unless objective.name='classification' (only a classifier has an encoder/head split)")
  check(isinstance(cl.init_from, str), 'classifier.init_from',
        "the workdir of a pretraining run, or '' to start from scratch")
  check(not cl.init_from or o.name == 'classification', 'classifier.init_from',
        "'' unless objective.name='classification'")
  positive_int('classifier.init_step', minimum=0)
  pooling_allowed = POOLINGS_FOR_MODEL.get(m.name, ())
  check(cl.pooling in pooling_allowed, 'classifier.pooling',
        f'{", ".join(map(repr, pooling_allowed))} for model {m.name!r}' +
        (" ('cls' reads the first position, which a causal model sees alone)"
         if m.name == 'gpt' else ''))
  check(isinstance(cl.dropout_rate, float) and 0 <= cl.dropout_rate < 1,
        'classifier.dropout_rate', 'a float in [0, 1)')
  _check_text_vae(config, given, check, choice, positive_int)
  _check_ssl(config, given, check, positive_int)
  return problems


def _check_ssl(config, given, check, positive_int) -> None:
  """Checks of the ELECTRA and contrastive keys, through `problems`' own check functions."""
  m, o = config.model, config.objective
  check(isinstance(m.generator_fraction, float) and 0 < m.generator_fraction <= 1,
        'model.generator_fraction', 'a float in (0, 1]')
  positive_int('model.projection_dim')
  check(isinstance(o.discriminator_weight, float) and o.discriminator_weight >= 0,
        'objective.discriminator_weight', 'a float >= 0')
  check(isinstance(o.temperature, float) and o.temperature > 0, 'objective.temperature',
        'a float > 0')
  check(isinstance(o.crop_min_scale, float) and 0 < o.crop_min_scale <= 1,
        'objective.crop_min_scale', 'a float in (0, 1]')
  init_from = config.train.init_from
  check(isinstance(init_from, str), 'train.init_from', "the workdir of a run, or ''")
  check(not init_from or o.name != 'classification', 'train.init_from',
        "'' with objective.name='classification' (a classifier starts from "
        "classifier.init_from)")


def _check_text_vae(config, given, check, choice, positive_int) -> None:
  """The text_vae keys' checks, reported through `problems`' own check functions."""
  m, tv = config.model, config.text_vae
  choice('model.encoder_type', TEXT_ENCODERS)
  positive_int('model.encoder_layers')
  choice('model.latent_conditioning', LATENT_CONDITIONINGS)
  positive_int('model.latent_prefix_len')
  choice('text_vae.kl_schedule', KL_SCHEDULES)
  positive_int('text_vae.kl_warmup_steps', minimum=0)
  check(tv.kl_schedule == 'constant' or (_all_ints(tv.kl_warmup_steps) and
                                         tv.kl_warmup_steps > 0), 'text_vae.kl_warmup_steps',
        f'an integer > 0 with text_vae.kl_schedule={tv.kl_schedule!r}')
  positive_int('text_vae.kl_cycles')
  check(isinstance(tv.kl_cycle_ratio, float) and 0 < tv.kl_cycle_ratio <= 1,
        'text_vae.kl_cycle_ratio', 'a float in (0, 1]')
  check(isinstance(tv.word_dropout, float) and 0 <= tv.word_dropout <= 1, 'text_vae.word_dropout',
        'a float in [0, 1]')
  for key in ('text_vae.free_bits', 'text_vae.target_kl'):
    check(isinstance(given.get(key), float) and given.get(key) >= 0, key, 'a float >= 0 (0 = off)')
  check(not (tv.free_bits and tv.target_kl), 'text_vae.target_kl',
        '0.0 when text_vae.free_bits > 0 (one threshold: per dimension or per sentence)')
  check(isinstance(tv.autoencoder, bool), 'text_vae.autoencoder', 'True or False')
  for key in ('text_vae.encoder_init_from', 'text_vae.baseline_workdir'):
    check(isinstance(given.get(key), str), key, "the workdir of a run, or '' for none")
  choice('text_vae.long_documents', LONG_DOCUMENTS)
  positive_int('text_vae.iw_samples')
  positive_int('text_vae.eval_iw_samples')
  if m.name == 'text_vae':
    no_latent = m.latent_conditioning == 'none'
    check(not (no_latent and (tv.autoencoder or tv.encoder_init_from)),
          'model.latent_conditioning', "'embedding', 'prefix' or 'both' with "
          'text_vae.autoencoder or text_vae.encoder_init_from (they need an encoder)')


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
  """A config saved by `to_json`, back on top of the current defaults (lists -> tuples)."""
  def tuples(value):
    if isinstance(value, dict):
      return {k: tuples(v) for k, v in value.items()}
    return tuple(value) if isinstance(value, list) else value
  config = base_config()
  with config.unlocked():
    config.update(tuples(json.loads(text)))
  return config


def differences(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict) -> dict[str, tuple]:
  """{key: (a value, b value)} for the flattened keys where the two configs differ."""
  fa, fb = _flatten(a.to_dict()), _flatten(b.to_dict())
  return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}
