"""Typed configuration: dataclasses are the schema and hold the defaults; YAML files hold values.

    cfg = load_config(RunConfig, "configs/tiny.yaml", ["train.max_steps=20", "model.d_model=128"])

Rules (see docs/contracts.md §4):
- unknown keys are rejected by name, with the known ones listed;
- a section given as a string ending in ``.yaml`` is loaded from that file (relative to the file
  that names it), so ``model: model/tiny.yaml`` reuses a model config;
- dotted overrides ``a.b=value`` are parsed as YAML scalars (``1e-3``, ``true``, ``[1, 2]``); a
  whole section may be swapped for a file, relative to the working directory:
  ``model=configs/model/tiny-hybrid.yaml``;
- every dataclass validates itself in ``__post_init__`` and raises ``ConfigError`` naming the field.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import yaml

from diffmamba.core.errors import ConfigError, UserError


def _check(cond: bool, field_name: str, problem: str) -> None:
    if not cond:
        raise ConfigError(f"{field_name}: {problem}")


@dataclass
class ModelConfig:
    """The trunk: embeddings (+ mask token), ``n_layers`` blocks, final norm, token head."""

    vocab_size: Optional[int] = None  # tokenizer size WITHOUT the mask token; None = from the tokenizer
    d_model: int = 256
    n_layers: int = 4
    expand: int = 2  # d_inner = expand * d_model
    headdim: int = 64  # P, value head dim; H = d_inner / headdim
    d_state: int = 64  # N, the q/k (B/C) dim
    mimo_rank: int = 1  # R; 1 = SISO
    rope_fraction: float = 0.5  # fraction of N rotated by the data-dependent phase (0.5 or 1.0)
    chunk_size: int = 64  # scan chunk length in time steps (MIMO: 64 // mimo_rank is the usual choice)
    tie: str = "partial"  # bidirectional tying: "full" | "partial" | "none"
    d_mlp: int = 0  # SwiGLU hidden width; 0 = 8/3 * d_model rounded up to a multiple of 64
    tie_embeddings: bool = True  # share the token embedding with the head
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    a_floor: float = 1e-4  # A <= -a_floor
    norm_eps: float = 1e-5
    init_std: float = 0.02
    max_seq_len: int = 1024  # longest training/sampling length the model is meant for
    # Which mixer each block uses, tiled over n_layers: "M" = bidirectional Mamba-3, "A" = attention
    # (diffmamba/modules/attention.py). "M" is the all-Mamba trunk, "A" a Transformer, "MMMA" a hybrid.
    layer_pattern: str = "M"
    attn_headdim: int = 64  # attention head dim; heads = d_model / attn_headdim
    attn_kv_heads: int = 0  # key/value heads (grouped-query attention); 0 = one per query head
    attn_rope_base: float = 10000.0  # rotary position base of the attention layers

    def __post_init__(self) -> None:
        if self.vocab_size is not None:
            _check(self.vocab_size >= 2, "model.vocab_size", f"must be >= 2, got {self.vocab_size}")
        for name in ("d_model", "n_layers", "expand", "headdim", "d_state", "chunk_size", "max_seq_len"):
            _check(getattr(self, name) >= 1, f"model.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(self.mimo_rank >= 1, "model.mimo_rank", f"MIMO rank must be >= 1, got {self.mimo_rank}")
        # (Mamba-3 head layout; an all-attention pattern has no Mamba layer to split into heads)
        _check(self.d_inner % self.headdim == 0 or "M" not in self.layer_pattern, "model.headdim",
               f"d_inner = expand * d_model = {self.d_inner} is not divisible by headdim = {self.headdim}")
        _check(self.rope_fraction in (0.5, 1.0), "model.rope_fraction",
               f"must be 0.5 or 1.0, got {self.rope_fraction}")
        _check(self.d_state % 2 == 0, "model.d_state", f"must be even (rotary pairs), got {self.d_state}")
        _check(self.tie in ("full", "partial", "none"), "model.tie",
               f"must be 'full', 'partial' or 'none', got {self.tie!r}")
        _check(self.d_mlp >= 0, "model.d_mlp", f"must be >= 0 (0 = auto), got {self.d_mlp}")
        _check(0 < self.dt_min <= self.dt_max, "model.dt_min", "need 0 < dt_min <= dt_max")
        _check(self.a_floor > 0, "model.a_floor", "must be > 0")
        _check_layer_pattern(self)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def num_rope_angles(self) -> int:
        """S: rotated pairs = floor(N * rope_fraction) rounded down to even, halved."""
        return (int(self.d_state * self.rope_fraction) // 2 * 2) // 2

    @property
    def mlp_hidden(self) -> int:
        return self.d_mlp or int(math.ceil(8 * self.d_model / 3 / 64) * 64)

    @property
    def layer_kinds(self) -> str:
        """The mixer of every block, one letter per layer: ``layer_pattern`` tiled over ``n_layers``."""
        return self.layer_pattern * (self.n_layers // len(self.layer_pattern))

    @property
    def attn_heads(self) -> int:
        return self.d_model // self.attn_headdim

    @property
    def attn_kv_heads_resolved(self) -> int:
        return self.attn_kv_heads or self.attn_heads


def _check_layer_pattern(cfg: "ModelConfig") -> None:
    """One-line errors for the layer pattern and, when it has attention layers, their shape."""
    pattern = cfg.layer_pattern
    _check(bool(pattern) and set(pattern) <= {"M", "A"}, "model.layer_pattern",
           f"must be a string of M (Mamba-3) and A (attention) letters such as 'M', 'A' or 'MMMA', got {pattern!r}")
    _check(cfg.n_layers >= 1 and cfg.n_layers % len(pattern) == 0, "model.layer_pattern",
           f"{pattern!r} ({len(pattern)} letters) does not tile model.n_layers = {cfg.n_layers}; use a pattern whose "
           "length divides n_layers, or one letter per layer")
    if "A" not in pattern:
        return
    _check(cfg.attn_headdim >= 2 and cfg.attn_headdim % 2 == 0, "model.attn_headdim",
           f"must be even and >= 2 (rotary pairs), got {cfg.attn_headdim}")
    _check(cfg.d_model % cfg.attn_headdim == 0, "model.attn_headdim",
           f"d_model = {cfg.d_model} is not divisible by attn_headdim = {cfg.attn_headdim}")
    heads = cfg.d_model // cfg.attn_headdim
    _check(cfg.attn_kv_heads >= 0 and (cfg.attn_kv_heads == 0 or heads % cfg.attn_kv_heads == 0),
           "model.attn_kv_heads", f"must be 0 (one per head) or divide the {heads} attention heads, "
           f"got {cfg.attn_kv_heads}")
    _check(cfg.attn_rope_base > 1, "model.attn_rope_base", f"must be > 1, got {cfg.attn_rope_base}")


@dataclass
class DataConfig:
    """Where text comes from, how it is tokenised and packed."""

    source: str = "builtin"  # "builtin" | a local file / folder / glob | a Hub dataset name
    subset: Optional[str] = None  # Hub dataset config name
    text_field: str = "text"
    # Documents of text files: "file" | "paragraph" (blank-line separated) | "line";
    # "auto" = one per file when there are several files, else one per paragraph.
    text_unit: str = "auto"
    tokenizer: str = "builtin"  # "builtin" (BPE trained on the built-in corpus) | "gpt2" | path to tokenizer.json / folder
    tokenizer_vocab_size: int = 4096  # vocabulary of a tokenizer trained by diffmamba
    seq_len: int = 256
    packing: str = "wrap"  # "wrap": concatenate documents with EOS and cut (MDLM); "pad": one document per row
    val_fraction: float = 0.01  # of documents, deterministic split
    max_documents: int = 0  # 0 = all; cap for quick runs
    streaming: bool = False
    num_proc: int = 2
    cache_dir: Optional[str] = None  # default: ~/.cache/diffmamba
    seed: int = 1234

    def __post_init__(self) -> None:
        _check(self.seq_len >= 2, "data.seq_len", f"must be >= 2, got {self.seq_len}")
        _check(self.packing in ("wrap", "pad"), "data.packing", f"must be 'wrap' or 'pad', got {self.packing!r}")
        _check(self.text_unit in ("auto", "file", "paragraph", "line"), "data.text_unit",
               f"must be 'auto', 'file', 'paragraph' or 'line', got {self.text_unit!r}")
        _check(self.max_documents >= 0, "data.max_documents", "must be >= 0 (0 = all)")
        _check(0 < self.val_fraction < 1, "data.val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        _check(self.tokenizer_vocab_size >= 260, "data.tokenizer_vocab_size", "must be >= 260 (256 bytes + specials)")
        _check(self.num_proc >= 1, "data.num_proc", "must be >= 1")


@dataclass
class ObjectiveConfig:
    """Training objective: masked diffusion (MDLM, SUBS, continuous-time NELBO), AR, or block diffusion."""

    name: str = "diffusion"  # "diffusion" | "ar" | "block_diffusion" | "dual" (AR + block diffusion, one model)
    schedule: str = "loglinear"  # alpha_t = 1 - (1 - eps) t
    eps: float = 1e-3  # schedule truncation
    sampling_eps: float = 1e-3  # t ~ U[sampling_eps, 1]
    antithetic: bool = True  # one time sample per stratum of the global batch
    var_length_prob: float = 0.01  # fraction of sequences cut to a random length (LLaDA / MDLM #35)
    block_size: int = 0  # block diffusion L'; must divide data.seq_len
    ar_weight: float = 0.5  # dual: weight w of the AR loss, (1 - w) on block diffusion (diffmamba/objectives/dual.py)

    def __post_init__(self) -> None:
        _check(self.name in ("diffusion", "ar", "block_diffusion", "dual"), "objective.name",
               f"must be 'diffusion', 'ar', 'block_diffusion' or 'dual', got {self.name!r}")
        _check(self.schedule in ("loglinear", "cosine"), "objective.schedule",
               f"must be 'loglinear' or 'cosine', got {self.schedule!r}")
        _check(0 <= self.eps < 1, "objective.eps", "must be in [0, 1)")
        _check(0 <= self.sampling_eps < 1, "objective.sampling_eps", "must be in [0, 1)")
        _check(0 <= self.var_length_prob <= 1, "objective.var_length_prob", "must be in [0, 1]")
        _check(self.block_size >= 0, "objective.block_size", "must be >= 0")
        _check(0 <= self.ar_weight <= 1, "objective.ar_weight", "must be in [0, 1] (the AR share of the dual loss)")
        if self.name in ("block_diffusion", "dual"):
            _check(self.block_size >= 1, "objective.block_size", f"{self.name} needs block_size >= 1")


# Speculative decoding's scoring scan keeps the state after each token of its k + 1 token draft
# block (n_layers x d_inner x d_state floats apiece), so the draft length k is bounded.
MAX_DRAFT_LEN = 64


def check_draft_len(k: int, flag: str = "--draft-len") -> None:
    """A one-line UserError unless 1 <= k <= MAX_DRAFT_LEN."""
    if not 1 <= k <= MAX_DRAFT_LEN:
        raise UserError(f"{flag} must be in [1, {MAX_DRAFT_LEN}] (a round's scoring scan keeps one state per draft "
                        f"token), got {k}; e.g. {flag} 7")


@dataclass
class TrainConfig:
    """The optimisation loop (run through accelerate)."""

    max_steps: int = 1000
    global_batch_size: int = 32  # sequences per optimizer step, over all processes and accumulation
    micro_batch_size: int = 8  # sequences per forward/backward per process
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    lr_schedule: str = "cosine"  # "cosine" | "constant" (both after linear warm-up)
    warmup_steps: int = 100
    betas: tuple = (0.9, 0.98)
    adam_eps: float = 1e-8
    weight_decay: float = 0.1  # never applied to norms, biases, dt_bias, D
    grad_clip: float = 1.0
    ema: float = 0.9999  # 0 disables the EMA copy
    mixed_precision: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU) | "no" | "bf16"
    eval_every: int = 200  # validate every N steps and at the end; 0 = never
    eval_batches: int = 8
    save_every: int = 500  # checkpoint every N steps; 0 = only at the end
    keep_last: int = 2
    log_every: int = 10
    seed: int = 0  # model init, data order (with data.seed), noise; resume restores it exactly
    tensorboard: bool = False
    compile: bool = False
    num_workers: int = 0  # DataLoader worker processes per rank (0 = load in the training process)
    final_weights: str = "ema"  # weights exported to DIR/final: "ema" (if train.ema > 0) | "raw"
    # Warm start: the weights of another run (its final/), a final/ or a checkpoints/step_* folder,
    # with the same architecture and tokenizer; optimizer, EMA, step and data order start fresh.
    # E.g. a diffusion run adapted from an AR run. --resume ignores it (the checkpoint has the weights).
    init_from: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("max_steps", "global_batch_size", "micro_batch_size", "eval_batches", "log_every", "keep_last"):
            _check(getattr(self, name) >= 1, f"train.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(self.lr > 0, "train.lr", "must be > 0")
        _check(self.lr_schedule in ("cosine", "constant"), "train.lr_schedule", "must be 'cosine' or 'constant'")
        _check(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _check(0 <= self.ema < 1, "train.ema", "must be in [0, 1)")
        _check(self.mixed_precision in ("auto", "no", "bf16"), "train.mixed_precision",
               "must be 'auto', 'no' or 'bf16'")
        _check(len(self.betas) == 2, "train.betas", "needs two values")
        _check(self.global_batch_size % self.micro_batch_size == 0, "train.global_batch_size",
               f"{self.global_batch_size} is not a multiple of train.micro_batch_size = {self.micro_batch_size}; "
               "global batch = micro batch x accumulation steps x processes")
        _check(self.adam_eps > 0, "train.adam_eps", "must be > 0")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(self.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 = no clipping)")
        _check(self.eval_every >= 0, "train.eval_every", f"must be >= 0 (0 = no validation), got {self.eval_every}")
        _check(self.save_every >= 0, "train.save_every", f"must be >= 0 (0 = only at the end), got {self.save_every}")
        _check(self.num_workers >= 0, "train.num_workers", "must be >= 0")
        _check(self.final_weights in ("ema", "raw"), "train.final_weights", "must be 'ema' or 'raw'")
        _check(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
        self.betas = tuple(float(b) for b in self.betas)


@dataclass
class RunConfig:
    """A complete training run: what ``configs/*.yaml`` describe."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _check(self.data.seq_len <= self.model.max_seq_len, "data.seq_len",
               f"{self.data.seq_len} is above model.max_seq_len = {self.model.max_seq_len}; "
               "lower data.seq_len or raise model.max_seq_len")
        if self.objective.name in ("block_diffusion", "dual"):
            _check(self.data.seq_len % self.objective.block_size == 0, "objective.block_size",
                   f"{self.objective.block_size} does not divide data.seq_len = {self.data.seq_len}; pick a divisor "
                   f"such as {', '.join(str(d) for d in _divisors(self.data.seq_len)[:8])}")
        # The dual objective's noisy blocks start from the AR stream's per-token scan states, which an
        # attention layer does not have (its AR "state" is the causal KV cache, not a block boundary).
        _check(self.objective.name != "dual" or "A" not in self.model.layer_pattern, "objective.name",
               f"dual needs an all-Mamba trunk (model.layer_pattern {self.model.layer_pattern!r} has attention "
               "layers); use model.layer_pattern=M, or objective.name=block_diffusion for a hybrid")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# --------------------------------------------------------------------------- loading

def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated field type, or raise ConfigError naming the field."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of fields, got {value!r}")
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or int(value) != value:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):
            # PyYAML follows YAML 1.1, where 1e-3 (no dot) is a string, not a float.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp in (tuple, list) or origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value) if (tp is tuple or origin is tuple) else list(value)
    return value


def _build(cls, values: dict, where: str = ""):
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(known))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; known keys here: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        sub = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(value, hints[name], sub)
    return cls(**kwargs)


def _resolve_includes(values: dict, base_dir: str, cls) -> dict:
    """Replace ``section: file.yaml`` by that file's mapping (recursively, relative paths)."""
    out = {}
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        tp = hints.get(key)
        if isinstance(value, str) and value.endswith((".yaml", ".yml")) and tp is not None and dataclasses.is_dataclass(tp):
            path = value if os.path.isabs(value) else os.path.join(base_dir, value)
            if not os.path.exists(path):
                raise ConfigError(f"{key}: included file {path} does not exist")
            value = _read_yaml(path)
            value = _resolve_includes(value, os.path.dirname(path), tp)
        elif isinstance(value, dict) and tp is not None and dataclasses.is_dataclass(tp):
            value = _resolve_includes(value, base_dir, tp)
        out[key] = value
    return out


def _read_yaml(path: str) -> dict:
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass an existing --config (see configs/)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of fields at the top level")
    return values


def apply_overrides(values: dict, overrides: Sequence[str]) -> dict:
    """Apply ``a.b=value`` strings to a nested dict (values parsed as YAML scalars)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        try:
            parsed = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]}); "
                              "quote it, e.g. key='text'") from None
        node = values
        parts = key.lstrip("-").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a section")
        node[parts[-1]] = parsed
    return values


def load_config(cls, path: Optional[str] = None, overrides: Sequence[str] = ()):
    """Build ``cls`` from an optional YAML file plus dotted overrides; strict about unknown keys."""
    values: dict = {}
    if path is not None:
        values = _resolve_includes(_read_yaml(path), os.path.dirname(os.path.abspath(path)), cls)
    for item in overrides:  # one at a time: ``model=FILE.yaml`` then ``model.d_model=64`` works
        values = _resolve_includes(apply_overrides(values, [item]), os.getcwd(), cls)
    return _build(cls, values)


def load_model_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> "ModelConfig":
    """A model config for a model built without a tokenizer (benchmarks, the smoke test): a
    vocab_size the file leaves to the tokenizer becomes the built-in tokenizer's default size."""
    cfg = load_config(ModelConfig, path, overrides)
    if cfg.vocab_size is None:
        cfg = load_config(ModelConfig, path, [*overrides, f"vocab_size={DataConfig.tokenizer_vocab_size}"])
    return cfg


def config_from_dict(cls, values: dict):
    """Strictly rebuild a dataclass from a plain dict (e.g. a checkpoint's config.json)."""
    return _build(cls, values)


def to_dict(cfg) -> dict:
    """Plain nested dict (tuples as lists) for JSON / YAML."""
    def conv(v):
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(dataclasses.asdict(cfg))
