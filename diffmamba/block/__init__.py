"""Block diffusion with an exact, constant-size Mamba-3 state cache (shared/spec/block-diffusion.md).

- ``states``: forward continuation states at every block boundary of one long scan.
- ``streams``: the two-stream (clean / noisy) forward pass; ``DiffMamba.forward(x0, block_size=L',
  noisy=x_t)`` dispatches to it.
- ``loss``: the per-block masked-diffusion NELBO (training and seeded evaluation); ``objective``
  plugs it into the training loop as ``objective.name: block_diffusion``.
- ``sampler``: block-by-block sampling with any registered sampler and the per-layer state cache.
"""
from diffmamba.block.loss import block_diffusion_loss, block_diffusion_nll, block_diffusion_training_loss, mask_blocks
from diffmamba.block.sampler import block_sample, prefill_cache
from diffmamba.block.states import BoundaryStates, block_boundary_states
from diffmamba.block.streams import block_streams, check_block_size

__all__ = ["BoundaryStates", "block_boundary_states", "block_streams", "check_block_size", "mask_blocks",
           "block_diffusion_loss", "block_diffusion_nll", "block_diffusion_training_loss", "block_sample", "prefill_cache"]
