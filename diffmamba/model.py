"""DiffMamba: a masked-diffusion LM on a bidirectional Mamba-3 trunk, with an AR mode on the same
layers (docs/contracts.md §2).

    model = DiffMamba(ModelConfig(vocab_size=4096, d_model=128, n_layers=4))
    logits = model(tokens, mode="diffusion")      # [B, T, V + 1], both scan directions
    logits = model(tokens, mode="ar")             # [B, T, V + 1], forward direction only (causal)
    logits, state = model.prefill(prompt)         # AR over a prompt, returns per-layer states
    logits_t, state = model.step(token_t, state)  # one AR token, O(1) in the context length
    model.save_pretrained("ckpt/"); model = DiffMamba.from_pretrained("ckpt/")

The vocabulary has one extra row, the mask token (``mask_token_id = vocab_size``). Its logit is
-inf in both modes: the denoiser never predicts [MASK] (SUBS) and the AR head never emits it.
There is no time conditioning: the mask pattern tells the denoiser the noise level
(docs/masked-diffusion.md §5).
"""

from __future__ import annotations

import json
import math
import os
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from diffmamba import __version__
from diffmamba.config import ModelConfig, config_from_dict, to_dict
from diffmamba.core.errors import UserError
from diffmamba.core.io import atomic_path, write_json
from diffmamba.modules import RMSNorm, make_block
from diffmamba.modules.two_stream import block_streams, dual_streams
from diffmamba.ops import Mamba3State

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
MODES = ("diffusion", "ar")


class DiffMamba(nn.Module):
    """Embedding (vocab_size + 1 rows) -> n_layers Blocks -> RMSNorm -> token head.

    Init: embedding (and an untied head) N(0, init_std); every residual-branch end (mixer
    out_proj, MLP down) kaiming-uniform / sqrt(2 * n_layers) (two residual adds per block, as in
    mamba_ssm / GPT-2); the Mamba-3 parameters per docs/mamba3.md §1.8 (see ``Mamba3Direction``).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size is None:
            raise UserError("model.vocab_size is not set; set it in the model config "
                            "(training fills it from the tokenizer)")
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size + 1, config.d_model)
        self.blocks = nn.ModuleList(make_block(config, kind) for kind in config.layer_kinds)
        self.final_norm = RMSNorm(config.d_model, eps=config.norm_eps)
        # A tied head reads embedding.weight, so the checkpoint holds no duplicate tensor.
        self.head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size + 1, bias=False)
        self.reset_parameters()

    # ------------------------------------------------------------------------------------ setup

    @property
    def mask_token_id(self) -> int:
        return self.config.vocab_size

    @property
    def vocab_size(self) -> int:
        """Columns of the logits: the tokenizer's vocabulary plus the mask token."""
        return self.config.vocab_size + 1

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The LM-level init (idempotent); module constructors already did the Mamba-3 part."""
        std = self.config.init_std
        nn.init.normal_(self.embedding.weight, std=std)
        if self.head is not None:
            nn.init.normal_(self.head.weight, std=std)
        residual_scale = math.sqrt(2 * self.config.n_layers)
        for block in self.blocks:
            for linear in (*block.mixer.out_projs, block.mlp.down):
                nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5))
                linear.weight.div_(residual_scale)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Trainable parameter count (a tied head counted once); optionally without the embedding."""
        total = sum(p.numel() for p in self.parameters())
        return total - self.embedding.weight.numel() if non_embedding else total

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on projection/embedding matrices only; never on norms, biases,
        dt_bias, D or the MIMO vectors (docs/mamba3.md §6.4)."""
        matrices = {id(m.weight) for m in self.modules() if isinstance(m, (nn.Linear, nn.Embedding))}
        decay = [p for p in self.parameters() if id(p) in matrices]
        no_decay = [p for p in self.parameters() if id(p) not in matrices]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    # ---------------------------------------------------------------------------------- forward

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Head: hidden [..., D] (after the final norm) -> logits [..., V + 1], mask column -inf."""
        weight = self.embedding.weight if self.head is None else self.head.weight
        logits = F.linear(hidden, weight)
        # In place: the linear's backward does not need its output, and an out-of-place fill
        # would copy a [B, T, V + 1] tensor.
        logits[..., self.mask_token_id] = float("-inf")
        return logits

    def forward(
        self,
        tokens: torch.Tensor,
        mode: str = "diffusion",
        valid_mask: Optional[torch.Tensor] = None,
        return_hidden: bool = False,
        fwd_states: Optional[list[Mamba3State]] = None,
        return_fwd_states: bool | str = False,
        block_size: Optional[int] = None,
        noisy: Optional[torch.Tensor] = None,
    ):
        """tokens: [B, T] int64 in [0, V] (V = mask). mode: "diffusion" (both directions) or "ar"
        (forward direction only: position i sees tokens <= i).

        valid_mask: [B, T] bool, False at right padding; padded rows then equal unpadded ones.
        return_hidden: return [B, T, D] after the final norm instead of logits (chunked losses;
        ``model.logits(hidden)`` applies the head).
        fwd_states / return_fwd_states: per-layer forward-direction states in and out (block
        diffusion and prefill); the reverse direction always starts from zero. With mode="ar",
        return_fwd_states="every" gives the state after every token (``prefill(every_token=True)``).
        An attention layer (``layer_pattern`` "A") takes and returns a ``KVCache`` instead: the new
        tokens attend to all of it, and it comes back grown by them.

        block_size / noisy: block diffusion training (``diffmamba.modules.two_stream``): ``tokens`` is
        the clean stream (block-causal), ``noisy`` [B, T] the noisy stream, whose output is
        returned; dispatched from here so wrappers (DDP, compile) see one forward call. With
        mode="ar" the clean stream is the AR pass and both outputs are returned, (noisy, AR)
        (the dual objective, ``diffmamba.objectives.dual``).

        Returns logits [B, T, V + 1] (or hidden), plus the list of final states when asked.
        """
        if block_size is not None and mode == "ar":  # the dual objective: (noisy, AR) outputs
            return dual_streams(self, tokens, block_size, noisy, valid_mask=valid_mask, return_hidden=return_hidden)
        if block_size is not None:

            return block_streams(self, tokens, block_size, noisy=noisy, valid_mask=valid_mask,
                                 return_hidden=return_hidden)
        if mode not in MODES:
            raise ValueError(f"mode must be 'diffusion' or 'ar', got {mode!r}")
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape [B, T], got {list(tokens.shape)}")
        if fwd_states is not None and len(fwd_states) != len(self.blocks):
            raise ValueError(f"fwd_states must hold one state per layer ({len(self.blocks)}), got {len(fwd_states)}")
        causal = mode == "ar"
        hidden = self.embedding(tokens)
        final_states = []
        for layer, block in enumerate(self.blocks):
            out = block(hidden, causal=causal, valid_mask=valid_mask,
                        fwd_initial_state=None if fwd_states is None else fwd_states[layer],
                        return_fwd_state=return_fwd_states)
            if return_fwd_states:
                out, state = out
                final_states.append(state)
            hidden = out
        hidden = self.final_norm(hidden)
        out = hidden if return_hidden else self.logits(hidden)
        return (out, final_states) if return_fwd_states else out

    # ------------------------------------------------------------------------------ AR decoding

    def init_state(self, batch_size: int, device=None) -> list[Mamba3State]:
        """Fresh per-layer forward-direction states (model dtype; device defaults to the model's):
        a Mamba3State per Mamba-3 layer, an empty KVCache per attention layer."""
        weight = self.embedding.weight
        return [block.mixer.init_state(batch_size, device or weight.device, weight.dtype) for block in self.blocks]

    def prefill(self, tokens: torch.Tensor, state: Optional[list[Mamba3State]] = None, every_token: bool = False):
        """AR pass over tokens [B, T] (chunked scan), continuing from ``state`` if given.
        Returns (logits [B, T, V + 1], per-layer states after the last token). With ``every_token``
        (Mamba-3 layers only) each layer's state has a T axis after B: entry t is the state after
        tokens[:, :t + 1], as a prefill of that prefix would return it."""
        return self(tokens, mode="ar", fwd_states=state, return_fwd_states="every" if every_token else True)

    def step(self, token_t: torch.Tensor, state: Optional[list[Mamba3State]]):
        """One AR token: token_t [B] -> (logits_t [B, V + 1], new per-layer states).

        ``state`` comes from ``init_state``, ``prefill`` or a previous ``step`` (None = fresh).
        Kernels may update states in place: keep only the returned list. Decode under
        ``torch.no_grad()``: with autograd recording, the CUDA step falls back to the reference.
        """
        if token_t.dim() != 1:
            raise ValueError(f"token_t must have shape [B], got {list(token_t.shape)}")
        if state is None:
            state = self.init_state(token_t.shape[0], token_t.device)
        hidden = self.embedding(token_t)
        new_state = []
        for block, layer_state in zip(self.blocks, state):
            hidden, layer_state = block.step(hidden, layer_state)
            new_state.append(layer_state)
        return self.logits(self.final_norm(hidden)), new_state

    # ------------------------------------------------------------------------------------ costs

    def estimate_flops_per_token(self, seq_len: int, mode: str = "diffusion") -> float:
        """Training FLOPs per token (forward + backward = 3x forward) for MFU.

        6 * (weights of the GEMMs a token goes through, head included) plus the chunked scan:
        per head and direction, C*R rows of width N + P against each time step's R rows
        (intra-chunk, counted dense as the kernel computes it) and two N x P state products per
        rank (inter-chunk read, state update); C = min(chunk_size, seq_len).
        """
        if mode == "dual":  # the AR stream plus a bidirectional noisy stream (diffmamba.objectives.dual)
            return (self.estimate_flops_per_token(seq_len, mode="ar")
                    + self.estimate_flops_per_token(seq_len, mode="diffusion"))
        if mode == "block_diffusion":
            # Two streams (diffmamba.modules.two_stream): the trunk runs on the clean and the noisy
            # copy, the head on the noisy one only.
            head = 6 * self.vocab_size * self.config.d_model
            return 2 * self.estimate_flops_per_token(seq_len, mode="diffusion") - head
        cfg = self.config
        causal = mode == "ar"
        gemm = sum(block.mixer.matmul_params(causal) + block.mlp.gate_up.weight.numel()
                   + block.mlp.down.weight.numel() for block in self.blocks)
        gemm += self.vocab_size * cfg.d_model
        chunk, R, N, P = min(cfg.chunk_size, seq_len), cfg.mimo_rank, cfg.d_state, cfg.headdim
        scan_macs = R * R * chunk * (N + P) + 2 * R * N * P
        directions = 1 if causal else 2
        scan = 6 * scan_macs * cfg.nheads * directions * cfg.layer_kinds.count("M")
        # Attention layers (layer_pattern "A"): q k^T and p v over the sequence, per token.
        attention = sum(6 * block.mixer.attention_macs_per_token(seq_len, causal) for block in self.blocks
                        if hasattr(block.mixer, "attention_macs_per_token"))
        return float(6 * gemm + scan + attention)

    # ---------------------------------------------------------------------------- checkpoints

    def save_pretrained(self, directory: str) -> None:
        """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created if needed).

        Each file is written to a temporary name and renamed, so an interrupted save never leaves
        a half-written checkpoint under the real name.
        """

        os.makedirs(directory, exist_ok=True)
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.state_dict().items()}
        with atomic_path(os.path.join(directory, WEIGHTS_NAME)) as weights_tmp:
            save_file(tensors, weights_tmp, metadata={"format": "pt", "diffmamba_version": __version__})
        write_json(os.path.join(directory, CONFIG_NAME), {"diffmamba_version": __version__, "model": to_dict(self.config)})

    @classmethod
    def from_pretrained(cls, directory: str, map_location="cpu") -> "DiffMamba":
        """Load a folder written by ``save_pretrained`` (weights keep their saved dtypes)."""

        what = "a folder written by DiffMamba.save_pretrained or `diffmamba train` (config.json + model.safetensors)"
        if not os.path.isdir(directory):
            raise UserError(f"checkpoint folder {directory} does not exist; pass {what}")
        config_path = os.path.join(directory, CONFIG_NAME)
        try:
            with open(config_path) as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError):
            meta = None
        if not isinstance(meta, dict) or "diffmamba_version" not in meta or not isinstance(meta.get("model"), dict):
            raise UserError(f"{directory} is not a diffmamba checkpoint (no readable {CONFIG_NAME} with a "
                            f"'model' section); pass {what}")
        weights_path = os.path.join(directory, WEIGHTS_NAME)
        if not os.path.isfile(weights_path):
            raise UserError(f"{directory} has {CONFIG_NAME} but no {WEIGHTS_NAME}; the checkpoint is incomplete, "
                            "save it again or pick another one")
        config = config_from_dict(ModelConfig, meta["model"])
        tensors = load_file(weights_path, device=str(map_location))
        # Built where the weights go (init is fast there), then the loaded tensors are adopted as
        # they are, dtype included. Not on the meta device: its first use imports torch's meta
        # registrations, which costs seconds, more than initialising the tiny model.
        with torch.device(map_location):
            model = cls(config)
        try:
            model.load_state_dict(tensors, strict=True, assign=True)
        except RuntimeError as error:
            first_line = " ".join(str(error).split())[:300]
            raise UserError(f"{weights_path} does not match its {CONFIG_NAME} ({first_line}); "
                            "the files come from different models, save the checkpoint again") from None
        return model
