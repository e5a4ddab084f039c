"""Prompt patterns with [MASK:n] spans -> canvas + fixed positions."""
import pytest

from diffmamba.sampling.canvas import build_canvas, parse_pattern
from diffmamba.core.errors import UserError

MASK = 99


class CharTokenizer:
    """One id per character (ord), enough to check where every token lands."""

    def encode(self, text):
        return [ord(c) for c in text]


def ids(text):
    return [ord(c) for c in text]


def test_pattern_spans_and_fixed_text():
    assert parse_pattern("The cat [MASK:5] on [MASK] mat") == ["The cat ", 5, " on ", 1, " mat"]
    canvas = build_canvas(CharTokenizer(), "ab [MASK:3] cd[MASK]", None, MASK)
    assert canvas.tokens.tolist() == ids("ab") + [MASK] * 3 + ids(" cd") + [MASK]
    assert canvas.fixed.tolist() == [True] * 2 + [False] * 3 + [True] * 3 + [False]
    assert canvas.length == 9 and canvas.num_generated == 4 and not canvas.is_prefix_only
    longer = build_canvas(CharTokenizer(), "ab [MASK:2] cd ", 12, MASK)
    assert longer.tokens.tolist() == ids("ab") + [MASK] * 2 + ids(" cd") + [MASK] * 5


def test_prefix_prompt_and_infill_suffix():
    prefix = build_canvas(CharTokenizer(), "hi ", None, MASK, default_length=6)
    assert prefix.tokens.tolist() == ids("hi") + [MASK] * 4 and prefix.is_prefix_only and prefix.prefix_length == 2
    infill = build_canvas(CharTokenizer(), "ab", None, MASK, infill=" z", span=2)
    assert infill.tokens.tolist() == ids("ab") + [MASK, MASK] + ids(" z")
    empty = build_canvas(CharTokenizer(), "", 5, MASK)
    assert empty.tokens.tolist() == [MASK] * 5 and empty.prefix_length == 0


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompt="abcdef", length=4), "longer than --length 4"),
    (dict(prompt="abcd", length=4), "nothing to generate"),
    (dict(prompt="a [MASK:0] b", length=None), "n >= 1"),
    (dict(prompt="a [MASK:x] b", length=None), "malformed mask marker"),
    (dict(prompt="a", length=None, infill="b", span=0), "--span N with N >= 1"),
    (dict(prompt="a", length=None, span=3), "--span needs --infill"),
    (dict(prompt="a", length=None, infill="[MASK]", span=1), "cannot hold"),
])
def test_bad_patterns_name_the_fix(kwargs, message):
    prompt, length = kwargs.pop("prompt"), kwargs.pop("length")
    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        build_canvas(CharTokenizer(), prompt, length, MASK, **kwargs)
