"""Conversion of parameters between sslm_jax models and other frameworks (numpy only)."""

from sslm_jax.interop.torch_convert import (  # noqa: F401
    flax_gpt_params_to_torch, flax_to_torch_state_dict, load_params_npz, save_params_npz,
    torch_gpt_state_dict_to_flax, torch_state_dict_to_flax)
