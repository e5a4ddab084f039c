"""The training loop behind ``diffmamba train`` and ``scripts/train.py`` (see diffmamba/cli/train.py).

One ``Trainer`` per process. accelerate provides the process group, device placement, DDP/FSDP
wrapping and bf16 autocast; data order, noise, schedule, EMA and checkpoints are ours, so that a
resumed run continues exactly (diffmamba/train/batches.py, diffmamba/train/checkpoint.py, diffmamba/train/optim.py).
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import replace
from typing import Optional

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, gather_object, set_seed
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_optimizer_state_dict,
)
from tqdm.auto import tqdm

from diffmamba.config import RunConfig, config_from_dict, to_dict
from diffmamba.core.errors import UserError
from diffmamba.core.io import remove_tree, replace_tree, write_json, write_yaml
from diffmamba.data import build_datasets, load_tokenizer, resolve_tokenizer
from diffmamba.model import DiffMamba
from diffmamba.objectives import OBJECTIVES, MicroBatch, diffusion_times
from diffmamba.train import checkpoint as ckpt
from diffmamba.train.batches import (BatchLayout, DataPosition, StepIndexSampler, training_loader,
                               validation_batches)
from diffmamba.train.debug import DebugLog
from diffmamba.train.log import MetricsLog, device_peak_flops, format_mfu, model_flops_utilization
from diffmamba.train.optim import EMA, build_optimizer, lr_at, set_lr
from diffmamba.train.runfolder import prepare_run_folder
from diffmamba.train.warm_start import WarmStartSource, read_warm_start, warm_start

# Streams of derived seeds, so that no two uses of train.seed ever share random numbers.
SEED_TIMES, SEED_NOISE, SEED_EVAL = 1, 2, 3


class TrainingDiverged(UserError):
    """The loss or gradient became NaN/inf; nothing after the last good checkpoint was saved."""


class TrainingStopped(Exception):
    """SIGTERM / SIGINT arrived: the step in flight was finished and checkpointed, then the run stopped."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


def derived_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (numpy SeedSequence mixing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


class ModelCall:
    """What an objective sees as "the model": calls go through the DDP/FSDP wrapper (so gradients
    are synchronised), attributes such as ``mask_token_id`` come from the model itself."""

    def __init__(self, wrapped: torch.nn.Module, model: torch.nn.Module):
        self._wrapped, self._model = wrapped, model

    def __call__(self, *args, **kwargs):
        return self._wrapped(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


def resolve_mixed_precision(setting: str, on_gpu: bool) -> str:
    if setting == "auto":
        return "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "no"
    if setting == "bf16" and not on_gpu:
        warnings.warn("train.mixed_precision=bf16 on CPU runs about 6x slower than fp32; use 'auto' or 'no'",
                      stacklevel=2)
    return setting


def batch_layout(cfg: RunConfig, world_size: int) -> BatchLayout:
    t = cfg.train
    per_pass = t.micro_batch_size * world_size
    if t.global_batch_size % per_pass:
        multiples = ", ".join(str(per_pass * k) for k in range(1, 5))
        raise UserError(f"train.global_batch_size = {t.global_batch_size} is not divisible by train.micro_batch_size "
                        f"x processes = {t.micro_batch_size} x {world_size} = {per_pass}; set train.global_batch_size "
                        f"to a multiple of {per_pass} (e.g. {multiples}) or change train.micro_batch_size")
    return BatchLayout(t.global_batch_size, t.micro_batch_size, world_size)


class Trainer:
    def __init__(self, cfg: RunConfig, out_dir: str, resume: bool = False, show_progress: bool = True,
                 debug_batches: bool = False, fresh: bool = False):

        if cfg.objective.name not in OBJECTIVES:
            raise UserError(f"objective.name = {cfg.objective.name!r} has no training loss in this installation; "
                            f"choose one of: {', '.join(OBJECTIVES)}")
        self.objective = OBJECTIVES[cfg.objective.name]
        if cfg.train.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise UserError("train.tensorboard is true but TensorBoard is not installed; "
                            "`pip install tensorboard` or set train.tensorboard=false")
        on_gpu = torch.cuda.is_available()
        # AR mode leaves the reverse-direction parameters unused; DDP must be told to expect that.
        ddp = DistributedDataParallelKwargs(find_unused_parameters=self.objective.model_mode == "ar")
        # cpu=True without a GPU: otherwise `accelerate launch` on CPU gives independent processes.
        self.accelerator = acc = Accelerator(cpu=not on_gpu, kwargs_handlers=[ddp],
                                             mixed_precision=resolve_mixed_precision(cfg.train.mixed_precision, on_gpu))
        self.rank, self.world_size, self.is_main = acc.process_index, acc.num_processes, acc.is_main_process
        self.layout = batch_layout(cfg, self.world_size)
        self.out_dir = out_dir
        self.ckpt_root = os.path.join(out_dir, "checkpoints")
        self.show_progress, self.debug_batches = show_progress, debug_batches

        # A warm-start source is read before the folder is touched (--fresh may delete one inside it).
        init_source = read_warm_start(cfg.train.init_from) if cfg.train.init_from and not resume else None
        resumable = prepare_run_folder(out_dir, resume, fresh, self.is_main)
        acc.wait_for_everyone()  # nobody writes into the folder before every process has looked at it
        self.tokenizer, self.train_set, self.val_set = self._load_data(cfg, resumable)
        self.cfg = cfg = self._with_vocab(cfg, resumable)
        if self.is_main:
            os.makedirs(out_dir, exist_ok=True)
            write_yaml(os.path.join(out_dir, "config.yaml"), to_dict(cfg))

        self._build_model(resumable, init_source)
        state = resumable.trainer_state if resumable else {}
        self.step = int(state.get("step", 0))
        self.position = DataPosition(**state.get("data_position", {}))
        self.window = state.get("log_window", {"loss_sum": 0.0, "steps": 0})
        self.last_saved = resumable.path if resumable else None
        self.metrics = MetricsLog(out_dir, self.is_main, cfg.train.tensorboard,
                                  resume_step=self.step if resumable else None)
        self.flops_per_token = self.model.estimate_flops_per_token(cfg.data.seq_len, mode=self.objective.model_mode)
        self.peak_flops = device_peak_flops(acc.device)
        self.last_val: dict = {}

    # -------------------------------------------------------------------------------------- setup

    def _load_data(self, cfg: RunConfig, resumable: Optional[ckpt.Resumable]):

        # The main process builds (and caches) tokenizer and datasets first; the others then read the cache.
        with self.accelerator.main_process_first():
            # A resumed run keeps the exact tokenizer it started with.
            tokenizer = load_tokenizer(resumable.path) if resumable else resolve_tokenizer(cfg.data)
            train_set, val_set = build_datasets(cfg.data, tokenizer)
        if not hasattr(train_set, "__len__"):
            raise UserError("data.streaming=true is not supported by the training loop (its exact resume needs "
                            "map-style rows); set data.streaming=false: packed rows are memory-mapped from disk")
        if len(train_set) < self.layout.global_batch_size:
            raise UserError(f"the training split of data.source={cfg.data.source!r} has {len(train_set)} rows of "
                            f"{cfg.data.seq_len} tokens, fewer than one global batch ({self.layout.global_batch_size}); "
                            "add text, or lower train.global_batch_size or data.seq_len")
        if len(val_set) == 0 and cfg.train.eval_every:
            raise UserError(f"the validation split of data.source={cfg.data.source!r} is empty; raise "
                            "data.val_fraction or add documents (or set train.eval_every=0 to skip validation)")
        return tokenizer, train_set, val_set

    def _with_vocab(self, cfg: RunConfig, resumable: Optional[ckpt.Resumable]) -> RunConfig:
        """The model's vocabulary comes from the tokenizer; a resumed run must match its checkpoint."""
        vocab = self.tokenizer.vocab_size
        if cfg.model.vocab_size not in (None, vocab):
            raise UserError(f"model.vocab_size = {cfg.model.vocab_size} but the tokenizer has {vocab} tokens; "
                            "set model.vocab_size=null (taken from the tokenizer) or use a matching tokenizer")
        if self.tokenizer.mask_id != vocab:
            raise UserError(f"the tokenizer's mask id is {self.tokenizer.mask_id}, the model needs {vocab} (the last "
                            "id); load tokenizers through diffmamba.data, which appends <|mask|>")
        cfg = replace(cfg, model=replace(cfg.model, vocab_size=vocab))
        if resumable:
            with open(os.path.join(resumable.path, ckpt.RUN_CONFIG)) as f:
                saved = config_from_dict(RunConfig, yaml.safe_load(f))
            if saved.model != cfg.model:
                changed = [k for k, v in to_dict(cfg.model).items() if to_dict(saved.model)[k] != v]
                raise UserError(f"--resume: the model config differs from the checkpoint's ({', '.join(changed)}); "
                                f"drop those overrides or start a new run")
            for section in ("data", "objective"):
                if getattr(saved, section) != getattr(cfg, section):
                    warnings.warn(f"resuming with a different {section} config than the checkpoint's; "
                                  "the continuation will not match the original run", stacklevel=2)
        return cfg

    def _build_model(self, resumable: Optional[ckpt.Resumable], init_source: Optional[WarmStartSource]) -> None:


        acc, cfg = self.accelerator, self.cfg
        set_seed(cfg.train.seed)  # model init is a function of the seed
        model = DiffMamba(cfg.model)
        if resumable:
            model.load_state_dict(load_file(os.path.join(resumable.path, ckpt.MODEL_WEIGHTS)))
        elif init_source is not None:
            warm_start(model, init_source, self.tokenizer)
        model.to(acc.device)
        optimizer = build_optimizer(model, cfg.train)
        self.prepared, self.optimizer = acc.prepare(model, optimizer)
        self.model = acc.unwrap_model(self.prepared)
        self.train_model = torch.compile(self.prepared) if cfg.train.compile else self.prepared
        self.ema = EMA(self.prepared, cfg.train.ema) if cfg.train.ema > 0 else None
        if resumable:
            self._restore(resumable)
        elif self.is_main:
            print(f"model: {self.model.num_parameters() / 1e6:.2f}M parameters "
                  f"({self.model.num_parameters(non_embedding=True) / 1e6:.2f}M without the embedding), "
                  f"layers {cfg.model.layer_kinds} (M = Mamba-3, A = attention), vocab {cfg.model.vocab_size}, "
                  f"objective {cfg.objective.name}, {self.world_size} process(es) on {acc.device.type}, "
                  f"mixed precision {acc.mixed_precision}")
            if init_source is not None:
                print(f"weights from {init_source.model_dir} (train.init_from); optimizer, EMA and data order "
                      "start fresh")

    def _restore(self, resumable: ckpt.Resumable) -> None:

        path, state = resumable.path, resumable.trainer_state
        try:
            set_optimizer_state_dict(self.prepared, self.optimizer.optimizer, ckpt.load_optimizer_state(path),
                                     options=StateDictOptions(full_state_dict=True))
        except (KeyError, ValueError, TypeError, RuntimeError) as e:  # well-formed files, wrong contents
            raise UserError(f"the optimizer state in {path} does not fit this model ({str(e)[:120]}); delete that "
                            "checkpoint folder to resume from the previous one, or start over with --fresh") from None
        if self.ema is not None:
            ema_file = os.path.join(path, ckpt.EMA_WEIGHTS)
            if os.path.isfile(ema_file):
                self.ema.load_from(self.prepared, load_file(ema_file), state.get("ema_updates", 0))
            else:
                warnings.warn(f"{path} has no EMA weights (saved with train.ema=0); the EMA restarts from the "
                              "current weights", stacklevel=2)
        rng = ckpt.load_rng_states(path)
        if self.rank < len(rng):
            ckpt.restore_saved_rng_state(path, rng[self.rank])
        else:
            warnings.warn(f"{path} was saved by {len(rng)} processes, this is process {self.rank}; its global RNG "
                          "starts fresh (the data order and diffusion noise stay exact)", stacklevel=2)

    # -------------------------------------------------------------------------------------- loop

    def fit(self) -> dict:

        cfg, acc = self.cfg, self.accelerator
        sampler = StepIndexSampler(len(self.train_set), cfg.train.seed, self.layout, self.rank, self.position)
        batches = iter(training_loader(self.train_set, sampler, cfg.train.num_workers, acc.device.type == "cuda"))
        debug = DebugLog(self.out_dir, self.rank, {
            "world_size": self.world_size, "dataset_rows": len(self.train_set), "start_step": self.step,
            "global_batch_size": self.layout.global_batch_size, "seed": cfg.train.seed}) if self.debug_batches else None
        bar = tqdm(total=cfg.train.max_steps, initial=self.step, disable=not (self.is_main and self.show_progress),
                   desc=f"train {cfg.objective.name}", dynamic_ncols=True, unit="step")
        tokens_per_step = self.layout.global_batch_size * cfg.data.seq_len
        window_start, window_steps, tokens_per_s, loss = time.perf_counter(), 0, 0.0, float("nan")
        previous_handlers = self._catch_stop_signals()
        try:
            while self.step < cfg.train.max_steps:
                if debug is not None:
                    rows = sampler.global_batch(self.position)
                    debug.batch_indices(self.step, [rows[self.layout.micro_slice(a, self.rank)]
                                                    for a in range(self.layout.accumulation_steps)])
                loss, grad_norm, stop = self._train_step(batches, debug)
                self.step += 1
                self.position = self.position.advanced(self.layout.global_batch_size, len(self.train_set))
                self.window["loss_sum"] += loss
                self.window["steps"] += 1
                window_steps += 1
                bar.update(1)
                done = self.step == cfg.train.max_steps
                if self.step % cfg.train.log_every == 0 or done:
                    elapsed = time.perf_counter() - window_start
                    tokens_per_s = window_steps * tokens_per_step / elapsed
                    mfu = model_flops_utilization(self.flops_per_token, tokens_per_s, self.peak_flops, self.world_size)
                    self.metrics.log({"step": self.step, "loss": self.window["loss_sum"] / self.window["steps"],
                                      "lr": lr_at(self.step - 1, cfg.train), "grad_norm": grad_norm,
                                      "tokens_per_s": round(tokens_per_s, 1), "mfu": mfu,
                                      "epoch": self.position.epoch, "tokens": self.step * tokens_per_step})
                    bar.set_postfix_str(f"loss {self.window['loss_sum'] / self.window['steps']:.4f}  "
                                        f"{tokens_per_s:,.0f} tok/s  mfu {format_mfu(mfu)}")
                    self.window = {"loss_sum": 0.0, "steps": 0}
                    window_start, window_steps = time.perf_counter(), 0
                if cfg.train.eval_every and (self.step % cfg.train.eval_every == 0 or done):
                    self.last_val = self.evaluate()
                    self.metrics.log({"step": self.step, **self.last_val})
                    bar.write(f"step {self.step}: val_loss {self.last_val['val_loss']:.4f}  "
                              f"val_ppl {self.last_val['val_ppl']:.2f}")
                if (cfg.train.save_every and self.step % cfg.train.save_every == 0) or done or stop:
                    self.save_checkpoint()
                if stop and not done:
                    raise TrainingStopped(f"stopped by a signal after step {self.step}; saved {self.last_saved}; "
                                          "continue with --resume", self.stop_signal or signal.SIGTERM)
            final_dir = self.export_final()
        finally:
            for number, handler in previous_handlers.items():
                signal.signal(number, handler)
            bar.close()
            self.metrics.close()
        acc.wait_for_everyone()
        if debug is not None:
            debug.parameter_checksum(self.model)
            debug.close()
        return {"step": self.step, "loss": loss, "tokens_per_s": tokens_per_s, "final_dir": final_dir, **self.last_val}

    def _catch_stop_signals(self) -> dict:
        """SIGTERM (cluster preemption, `accelerate launch` stopping its workers) and a first Ctrl-C
        finish the step in flight, save a checkpoint and stop; a second Ctrl-C interrupts at once."""
        self.stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(number, frame):
            self.stop_signal = number
            if number == signal.SIGINT:
                signal.signal(signal.SIGINT, signal.default_int_handler)

        return {number: signal.signal(number, request_stop) for number in (signal.SIGTERM, signal.SIGINT)}

    def _train_step(self, batches, debug) -> tuple[float, float, bool]:
        """One optimizer step over ``accumulation_steps`` micro-batches; returns (loss, grad norm,
        whether any process was asked to stop: the flag travels with the loss all-reduce, so every
        process stops after the same step).

        Gradients are of the *summed* NLL; after the last micro-batch they are divided by the global
        token count, so the update is the exact token mean over the global batch (DDP has averaged
        over processes already, hence the factor world_size)."""
        cfg, acc, device = self.cfg, self.accelerator, self.accelerator.device
        set_lr(self.optimizer, lr_at(self.step, cfg.train))
        # One time generator per optimizer step, the same on every process (stratified_times replays
        # it for each micro-batch); the masking noise differs per process.
        time_generator = torch.Generator().manual_seed(derived_seed(cfg.train.seed, SEED_TIMES, self.step))
        noise_generator = torch.Generator(device).manual_seed(derived_seed(cfg.train.seed, SEED_NOISE, self.step, self.rank))
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # summed NLL, tokens, stop requests
        steps = self.layout.accumulation_steps
        for a in range(steps):
            batch = next(batches)
            micro = MicroBatch(batch["input_ids"].to(device, non_blocking=True),
                               batch["valid"].to(device, non_blocking=True) if "valid" in batch else None,
                               self.rank, self.world_size, a, steps, time_generator, noise_generator)
            if debug is not None and cfg.objective.name == "diffusion":
                debug.write({"step": self.step, "rank": self.rank, "accum": a,
                             "t": diffusion_times(micro, cfg.objective).tolist()})
            sync = contextlib.nullcontext() if a == steps - 1 else acc.no_sync(self.prepared)
            with sync:
                nll = self.objective.train(ModelCall(self.train_model, self.model), micro, cfg.objective)
                acc.backward(nll.total)
            totals[:2] += torch.stack([nll.total.detach().double(), nll.count.double()])
        totals[2] = float(self.stop_signal is not None)
        totals = acc.reduce(totals, reduction="sum")
        scale = self.world_size / totals[1].clamp(min=1)
        grads = [p.grad for p in self.prepared.parameters() if p.grad is not None]
        torch._foreach_mul_(grads, scale.to(grads[0].dtype))
        grad_norm = acc.clip_grad_norm_(self.prepared.parameters(), cfg.train.grad_clip or float("inf"))
        loss, norm = (totals[0] / totals[1].clamp(min=1)).item(), float(grad_norm)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(self._divergence_message(loss, norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.prepared)
        return loss, norm, bool(totals[2].item())

    def _last_good(self) -> str:
        return f"the last good checkpoint is {self.last_saved}" if self.last_saved else "no checkpoint was written yet"

    def _next_run(self) -> str:
        if self.last_saved:
            return "then continue with --resume (or start over with --fresh)"
        return "then run again (with no checkpoint yet, the run starts over, with or without --resume)"

    def _divergence_message(self, loss: float, norm: float) -> str:
        return (f"loss is {loss} and gradient norm {norm} at step {self.step + 1}; training stopped without saving "
                f"that step ({self._last_good()}). Lower train.lr, raise train.warmup_steps or set train.grad_clip, "
                f"{self._next_run()}")

    # -------------------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation on the same rows every time, with the EMA weights and fixed noise:
        diffusion reports the NELBO bound per token, AR the exact NLL; val_ppl = exp(val_loss)."""

        cfg, acc, device = self.cfg, self.accelerator, self.accelerator.device
        totals = torch.zeros(2, dtype=torch.float64, device=device)
        model = ModelCall(self.prepared, self.model)
        weights = self.ema.swapped_into(self.prepared) if self.ema is not None else contextlib.nullcontext()
        self.prepared.eval()
        try:
            with weights:
                batches = validation_batches(self.val_set, cfg.train.micro_batch_size, cfg.train.eval_batches,
                                             self.rank, self.world_size)
                for i, batch in enumerate(tqdm(batches, desc="validation", leave=False, unit="batch",
                                               disable=not (self.is_main and self.show_progress))):
                    generator = torch.Generator(device).manual_seed(derived_seed(cfg.train.seed, SEED_EVAL, self.rank, i))
                    valid = batch["valid"].to(device) if "valid" in batch else None
                    nll = self.objective.evaluate(model, batch["input_ids"].to(device), valid, generator, cfg.objective)
                    totals += torch.stack([nll.total.double(), nll.count.double()])
        finally:
            self.prepared.train()
        totals = acc.reduce(totals, reduction="sum")
        val_loss = (totals[0] / totals[1].clamp(min=1)).item()
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0))}

    # -------------------------------------------------------------------------------------- saving

    def _full_state(self) -> dict:
        """The whole model state dict on CPU (gathered from FSDP shards; a collective call)."""

        state = get_model_state_dict(self.prepared, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        # On CPU the "offloaded" tensors are the live parameters themselves; copy them, or the EMA
        # swap (and the next optimizer step) would change what is about to be written.
        return {name: tensor.detach().clone() for name, tensor in state.items()}

    def save_checkpoint(self) -> None:

        acc, cfg = self.accelerator, self.cfg
        # A checkpoint must never hold NaN/inf weights (the loss of the step that made them is not
        # known yet): checked on every process's parameters (FSDP shards included).
        bad = sum(int(not torch.isfinite(p).all()) for p in self.prepared.parameters())
        if acc.reduce(torch.tensor(float(bad), device=acc.device), reduction="sum").item():
            raise TrainingDiverged(f"weights became NaN/inf at step {self.step}; training stopped without saving them "
                                   f"({self._last_good()}). Lower train.lr, raise train.warmup_steps or set "
                                   f"train.grad_clip, {self._next_run()}")
        weights = self._full_state()
        ema_weights = None
        if self.ema is not None:
            with self.ema.swapped_into(self.prepared):
                ema_weights = self._full_state()
        optimizer_state = get_optimizer_state_dict(self.prepared, self.optimizer.optimizer,
                                                   options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        rng_states = gather_object([ckpt.capture_rng_state()])
        trainer_state = {"step": self.step, "data_position": self.position.to_dict(), "log_window": self.window,
                         "ema_updates": self.ema.num_updates if self.ema else 0, "world_size": self.world_size,
                         "global_batch_size": self.layout.global_batch_size, "objective": cfg.objective.name}

        def write(folder: str) -> None:
            self._save_model_folder(weights, folder)
            if ema_weights is not None:
                save_file({k: v.contiguous() for k, v in ema_weights.items()}, os.path.join(folder, ckpt.EMA_WEIGHTS))
            write_yaml(os.path.join(folder, ckpt.RUN_CONFIG), to_dict(cfg))
            ckpt.save_training_state(folder, optimizer_state, rng_states)
            write_json(os.path.join(folder, ckpt.TRAINER_STATE), trainer_state)

        if self.is_main:
            self.last_saved = ckpt.save_checkpoint(self.ckpt_root, self.step, write, cfg.train.keep_last)
        acc.wait_for_everyone()
        self.last_saved = self.last_saved or os.path.join(self.ckpt_root, ckpt.step_dir_name(self.step))

    def _save_model_folder(self, weights: dict, folder: str) -> None:
        """``from_pretrained``-able model.safetensors + config.json, plus the tokenizer."""

        with torch.device("meta"):
            export = DiffMamba(self.cfg.model)
        export.load_state_dict(weights, assign=True)
        export.save_pretrained(folder)
        self.tokenizer.save(folder)

    def export_final(self) -> str:
        """``OUT/final``: the weights to use (EMA by default), tokenizer.json and the run config."""
        use_ema = self.ema is not None and self.cfg.train.final_weights == "ema"
        with self.ema.swapped_into(self.prepared) if use_ema else contextlib.nullcontext():
            weights = self._full_state()
        final = os.path.join(self.out_dir, "final")
        if self.is_main:
            tmp = final + ".tmp"
            remove_tree(tmp)
            os.makedirs(tmp)
            self._save_model_folder(weights, tmp)
            write_yaml(os.path.join(tmp, ckpt.RUN_CONFIG), to_dict(self.cfg))
            write_json(os.path.join(tmp, "export.json"), {"step": self.step, "weights": "ema" if use_ema else "raw"})
            replace_tree(tmp, final)
            print(f"final model ({'EMA' if use_ema else 'raw'} weights, step {self.step}): {final}")
        self.accelerator.wait_for_everyone()
        return final
