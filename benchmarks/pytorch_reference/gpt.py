"""The GPT of `sslm_jax.models.transformer.GPT` in PyTorch, layer for layer, for parity and timing.

  tokens -> Embedding (+ learned positions, or RoPE inside attention) -> Dropout
         -> num_layers x [x + Dropout(Attention(LN(x))); x + Dropout(Linear(GELU(Linear(LN(x)))))]
         -> LN -> logits = h @ Embedding^T (tied; or a separate Linear `lm_head`)

As the Flax model: pre-LayerNorm blocks with eps 1e-6, GELU with the tanh approximation, causal
attention with separate query/key/value projections (biases included) and softmax in float32,
attention dropout on the weights, float32 logits. The submodule names mirror the Flax ones
(`embed`, `position_embed`, `blocks.<i>.attention.query`, ...), which fixes the state_dict keys
that `sslm_jax.interop.flax_gpt_params_to_torch` writes. PyTorch's own initialization is kept
(parity tests and benchmarks load converted Flax weights, so it never matters there).

Attention goes through `F.scaled_dot_product_attention` (`attention='sdpa'`, PyTorch's fused CPU
and GPU kernels, what a PyTorch user would write) or written out (`'math'`, softmax(q k^T) v, for
checking the fused path).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-6  # Flax's nn.LayerNorm default (PyTorch's is 1e-5)
POSITIONS = ('learned', 'rotary')
ATTENTION = ('sdpa', 'math')


def apply_rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
  """RoPE of x (batch, heads, length, head_dim) at positions 0..length-1, "rotate half" layout.

  As `sslm_jax.models.attention.apply_rotary`: channel pairs (i, i + head_dim/2) rotate by
  position * base^(-2i/head_dim), computed in float32.
  """
  length, head_dim = x.shape[-2], x.shape[-1]
  half = head_dim // 2
  inv_freq = base ** (-torch.arange(half, dtype=torch.float32, device=x.device) / half)
  angles = torch.arange(length, dtype=torch.float32, device=x.device)[:, None] * inv_freq
  sin, cos = torch.sin(angles), torch.cos(angles)
  x1, x2 = x.float().chunk(2, dim=-1)
  return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class MultiHeadAttention(nn.Module):
  """Causal self-attention: query/key/value/out linear layers, optional RoPE, weight dropout."""

  def __init__(self, embed_dim: int, num_heads: int, dropout_rate: float = 0.0,
               use_rotary: bool = False, attention: str = 'sdpa'):
    super().__init__()
    if attention not in ATTENTION:
      raise ValueError(f'attention must be one of {ATTENTION}; got {attention!r}')
    self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
    self.dropout_rate, self.use_rotary, self.attention = dropout_rate, use_rotary, attention
    self.query = nn.Linear(embed_dim, embed_dim)
    self.key = nn.Linear(embed_dim, embed_dim)
    self.value = nn.Linear(embed_dim, embed_dim)
    self.out = nn.Linear(embed_dim, embed_dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, t, d = x.shape

    def heads(proj):  # (batch, heads, length, head_dim)
      return proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    q, k, v = heads(self.query), heads(self.key), heads(self.value)
    if self.use_rotary:
      q, k = apply_rotary(q), apply_rotary(k)
    p = self.dropout_rate if self.training else 0.0
    if self.attention == 'sdpa':
      out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
    else:
      logits = (q @ k.transpose(-2, -1)).float() / math.sqrt(self.head_dim)
      causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
      weights = torch.softmax(logits.masked_fill(~causal, float('-inf')), dim=-1)
      out = F.dropout(weights, p).to(v.dtype) @ v
    return self.out(out.transpose(1, 2).reshape(b, t, d))


class TransformerBlock(nn.Module):
  """x + Dropout(Attention(LN(x))), then x + Dropout(MLP(LN(x))) with a GELU (tanh) MLP."""

  def __init__(self, embed_dim: int, num_heads: int, mlp_dim: int, dropout_rate: float = 0.0,
               attention_dropout_rate: float = 0.0, use_rotary: bool = False,
               attention: str = 'sdpa'):
    super().__init__()
    self.attention_norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
    self.attention = MultiHeadAttention(embed_dim, num_heads, attention_dropout_rate, use_rotary,
                                        attention)
    self.mlp_norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
    self.mlp_in = nn.Linear(embed_dim, mlp_dim)
    self.mlp_out = nn.Linear(mlp_dim, embed_dim)
    self.dropout = nn.Dropout(dropout_rate)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.dropout(self.attention(self.attention_norm(x)))
    h = self.mlp_out(F.gelu(self.mlp_in(self.mlp_norm(x)), approximate='tanh'))
    return x + self.dropout(h)


class GPT(nn.Module):
  """tokens (batch, length) int64 -> next-token logits (batch, length, vocab) in float32.

  The constructor arguments are the fields of `sslm_jax.models.GPT` (no decode cache here).
  """

  def __init__(self, vocab_size: int, num_layers: int, num_heads: int, embed_dim: int,
               mlp_dim: int, max_len: int, dropout_rate: float = 0.0,
               attention_dropout_rate: float = 0.0, positions: str = 'learned',
               tie_embeddings: bool = True, attention: str = 'sdpa'):
    super().__init__()
    if positions not in POSITIONS:
      raise ValueError(f'positions must be one of {POSITIONS}; got {positions!r}')
    if embed_dim % num_heads:
      raise ValueError(f'embed_dim {embed_dim} is not divisible by num_heads {num_heads}')
    self.max_len, self.positions = max_len, positions
    self.embed = nn.Embedding(vocab_size, embed_dim)
    nn.init.normal_(self.embed.weight, std=0.02)  # as the Flax model's embedding init
    if positions == 'learned':
      self.position_embed = nn.Parameter(torch.randn(max_len, embed_dim) * 0.02)
    self.embed_dropout = nn.Dropout(dropout_rate)
    self.blocks = nn.ModuleList([
        TransformerBlock(embed_dim, num_heads, mlp_dim, dropout_rate, attention_dropout_rate,
                         use_rotary=positions == 'rotary', attention=attention)
        for _ in range(num_layers)])
    self.final_norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
    self.lm_head = None if tie_embeddings else nn.Linear(embed_dim, vocab_size)

  def forward(self, tokens: torch.Tensor) -> torch.Tensor:
    if tokens.shape[1] > self.max_len:
      raise ValueError(f'sequence length {tokens.shape[1]} exceeds max_len {self.max_len}')
    x = self.embed(tokens)
    if self.positions == 'learned':
      x = x + self.position_embed[:tokens.shape[1]]
    x = self.embed_dropout(x)
    for block in self.blocks:
      x = block(x)
    h = self.final_norm(x)
    logits = h @ self.embed.weight.t() if self.lm_head is None else self.lm_head(h)
    return logits.float()


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
  """Mean next-token NLL (nats) over every position, as `sslm_jax.objectives.lm.lm_loss`."""
  return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
