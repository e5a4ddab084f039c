"""Block diffusion with an exact, constant-size Mamba-3 state cache (shared/spec/block-diffusion.md).

- ``states``: forward continuation states at every block boundary of one long scan.
- ``streams``: the two-stream (clean / noisy) forward pass; ``DiffMamba.forward(x0, block_size=L',
  noisy=x_t)`` dispatches to it.
- ``loss``: the per-block masked-diffusion NELBO (training and seeded evaluation); ``objective``
  plugs it into the training loop as ``objective.name: block_diffusion``.
- ``sampler``: block-by-block sampling with any registered sampler and the per-layer state cache;
  ``sample_mode`` is ``diffmamba sample --mode block``.
- ``evaluation`` / ``report`` / ``eval_options``: the L' dial in ``diffmamba eval``; ``bench``:
  speed vs context and a device exactness check (``python -m diffmamba.block.bench``).

Import from the submodules (this package imports nothing, so CLI help stays fast).
"""
