"""The canvas every mode fills: token ids [B, L] with ``fixed`` [B, L] marking the given ones.

``prompt_canvas`` builds it from prompt ids (a prefix, or nothing); ``build_canvas`` from a text
prompt with masked spans, as ``Canvas`` (one row, expanded to a batch by ``Canvas.batch``).

Syntax: ``[MASK:n]`` is a span of n tokens to generate, ``[MASK]`` is one token, and the text
around the markers is kept fixed::

    "The cat [MASK:5] on the mat"   ->  tokens("The cat") + 5 masks + tokens(" on the mat")

Byte-level BPE tokens carry their *leading* space, so whitespace right before a generated span is
dropped (the generated tokens bring their own): "The cat " + span, not "The cat" + " " + span.
If ``length`` is larger than the pattern, the rest of the canvas is generated after it; a prompt
without markers is a plain prefix.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from diffmamba.core.errors import UserError

MASK_MARKER = re.compile(r"\[MASK(?::(\d+))?\]")
MARKER_HELP = "write [MASK] for one token or [MASK:n] for n tokens, e.g. 'The cat [MASK:5] on the mat'"


@dataclass
class Canvas:
    """tokens: [L] int64 (mask_id where generated); fixed: [L] bool, True where given."""

    tokens: Tensor
    fixed: Tensor

    @property
    def length(self) -> int:
        return int(self.tokens.numel())

    @property
    def num_generated(self) -> int:
        return int((~self.fixed).sum())

    @property
    def prefix_length(self) -> int:
        """Number of leading fixed tokens."""
        return leading_fixed(self.fixed[None])

    @property
    def is_prefix_only(self) -> bool:
        """True when the fixed tokens form a prefix (what AR decoding can continue)."""
        return not bool(self.fixed[self.prefix_length:].any())

    def batch(self, batch_size: int, device: Union[str, torch.device]) -> tuple[Tensor, Tensor]:
        """(canvas [B, L], fixed [B, L]) on ``device``."""
        return (self.tokens.to(device).expand(batch_size, -1).clone(),
                self.fixed.to(device).expand(batch_size, -1).clone())


def leading_fixed(fixed: Tensor) -> int:
    """Number of leading positions fixed in every row of ``fixed`` [B, L] (the shared prompt)."""
    free = (~fixed.all(dim=0)).nonzero()
    return int(free[0]) if free.numel() else fixed.shape[1]


def prompt_canvas(mask_id: int, batch_size: int, length: int, device: Union[str, torch.device],
                  prompt: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """(canvas, fixed) [B, P + length]: the prompt ids [B, P] (fixed), then ``length`` masks."""
    given = 0 if prompt is None else prompt.shape[1]
    canvas = torch.full((batch_size, given + length), mask_id, dtype=torch.long, device=device)
    fixed = torch.zeros_like(canvas, dtype=torch.bool)
    if prompt is not None:
        canvas[:, :given], fixed[:, :given] = prompt, True
    return canvas, fixed


def parse_pattern(text: str) -> list[Union[str, int]]:
    """Split ``text`` into literal pieces (str) and span lengths (int >= 1); empty pieces dropped."""
    pieces: list[Union[str, int]] = []
    position = 0
    for match in MASK_MARKER.finditer(text):
        pieces.append(text[position:match.start()])
        span = 1 if match.group(1) is None else int(match.group(1))
        if span < 1:
            raise UserError(f"{match.group(0)} asks for {span} tokens; a masked span needs n >= 1 ({MARKER_HELP})")
        pieces.append(span)
        position = match.end()
    pieces.append(text[position:])
    leftover = MASK_MARKER.sub("", text)
    if "[MASK" in leftover:
        bad = leftover[leftover.index("[MASK"):][:20]
        raise UserError(f"malformed mask marker near {bad!r}; {MARKER_HELP}")
    return [p for p in pieces if p != ""]


def has_mask_marker(text: str) -> bool:
    return MASK_MARKER.search(text) is not None


def build_canvas(tokenizer, prompt: str, length: Optional[int], mask_id: int, *, infill: Optional[str] = None,
                 span: Optional[int] = None, default_length: int = 128) -> Canvas:
    """The canvas for a prompt (with optional ``[MASK:n]`` markers) or prompt + span + infill suffix.

    Args:
        tokenizer: has ``encode(text) -> list[int]``.
        length: total tokens (prompt included); None = the pattern's own length when it has
            markers, else ``default_length``.
        infill, span: ``prompt`` + ``span`` generated tokens + ``infill`` (fixed suffix).
    """
    if span is not None and infill is None:
        raise UserError("--span needs --infill SUFFIX (the fixed text after the span); "
                        f"or {MARKER_HELP} inside --prompt")
    if infill is not None:
        if span is None or span < 1:
            raise UserError(f"--infill needs --span N with N >= 1 tokens to generate before it, got {span}; "
                            f"or {MARKER_HELP} inside --prompt")
        if has_mask_marker(infill):
            raise UserError("--infill is the fixed text after the span and cannot hold [MASK] markers; "
                            "put the whole pattern in --prompt instead")
        pieces = [*parse_pattern(prompt), span, infill]
    else:
        pieces = parse_pattern(prompt)
    pattern_has_span = any(isinstance(p, int) for p in pieces)
    # Generated tokens follow the last text piece when the prompt is a plain prefix or --length
    # extends the canvas past the pattern.
    continuation = not pattern_has_span or length is not None
    ids: list[int] = []
    fixed: list[bool] = []
    for i, piece in enumerate(pieces):
        if isinstance(piece, int):
            ids += [mask_id] * piece
            fixed += [False] * piece
            continue
        followed_by_generation = isinstance(pieces[i + 1], int) if i + 1 < len(pieces) else continuation
        if followed_by_generation:
            piece = piece.rstrip()  # the generated tokens bring their own leading space
        encoded = tokenizer.encode(piece) if piece else []
        ids += encoded
        fixed += [True] * len(encoded)
    if length is None:
        length = len(ids) if pattern_has_span else default_length
    if len(ids) > length:
        raise UserError(f"the prompt is {len(ids)} tokens, longer than --length {length}; "
                        f"raise --length to at least {len(ids) + (0 if pattern_has_span else 1)} or shorten the prompt")
    if len(ids) == length and not pattern_has_span:
        raise UserError(f"the prompt fills all --length {length} tokens, leaving nothing to generate; "
                        f"raise --length above {length}")
    ids += [mask_id] * (length - len(ids))
    fixed += [False] * (length - len(fixed))
    return Canvas(torch.tensor(ids, dtype=torch.long), torch.tensor(fixed, dtype=torch.bool))
