"""The ``diffmamba eval`` options of the block-diffusion dial, the trunk comparison and dual checkpoints.

Argument definitions only (argparse, no torch), so ``diffmamba eval --help`` stays instant; what each
option does to ``EvalOptions`` lives beside its evaluation (``apply_*_options`` in ``bd3lm_options.py``,
``trunks.py`` and ``decoding_options.py``).
"""
from __future__ import annotations


def add_block_eval_arguments(parser, parts: tuple) -> None:
    """``--block``, ``--block-sizes`` (and ``--contexts`` with the speed part) for ``diffmamba eval``."""
    g = parser.add_argument_group("block diffusion (the L' dial)")
    g.add_argument("--block", nargs="+", default=None, metavar="CKPT",
                   help="block-diffusion checkpoints (one per L', trained with --objective block_diffusion)")
    g.add_argument("--block-sizes", nargs="+", type=int, default=None, metavar="N",
                   help="evaluate every --block checkpoint at these L' (default: each one's trained size)")
    if "speed" in parts:
        g.add_argument("--contexts", nargs="+", type=int, default=None, metavar="N",
                       help="speed vs context: prompt lengths before generating --length tokens (batch 1), "
                            "e.g. 64 1024 4096")


def add_trunk_arguments(parser, parts: tuple) -> None:
    parser.add_argument("--trunks", nargs="+", default=None, metavar="CKPT",
                        help="diffusion checkpoints of different trunks (Mamba-3, attention, hybrid), compared side "
                             "by side in diffusion mode; with --contexts also sampling speed and decode-cache bytes "
                             "against the context length")


def add_decoding_eval_arguments(parser, parts: tuple) -> None:
    g = parser.add_argument_group("dual checkpoint (AR, block on AR states, speculative)")
    g.add_argument("--dual", default=None, metavar="CKPT",
                   help="a checkpoint trained with --objective dual: adds its AR mode, block diffusion on its AR "
                        "prefix states and self-speculative decoding to the comparison")
    g.add_argument("--draft-lens", nargs="+", type=int, default=None, metavar="K",
                   help="--dual: speculative draft lengths (default: the checkpoint's block size - 1)")
