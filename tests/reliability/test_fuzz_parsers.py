"""Fuzzing the two parsers that take free text from the command line: a prompt pattern
(diffmamba/diffusion/infill.py) and config overrides (diffmamba/config.py). Either a valid result or
a UserError, never another exception."""
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from diffmamba.config import RunConfig, load_config  # noqa: E402
from diffmamba.sampling.canvas import build_canvas, parse_pattern  # noqa: E402
from diffmamba.core.errors import UserError  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text around mask markers, with the marker's own characters over-represented.
pieces = st.one_of(st.text(max_size=12), st.sampled_from(["[MASK]", "[MASK:", "]", ":", "[MASK:3]", "[MASK:0]",
                                                          "[MASK:-1]", "[MASK:x]", "[mask:2]", "[MASK:007]"]))
patterns = st.lists(pieces, max_size=6).map("".join)


class ByteTokenizer:
    """One token per UTF-8 byte: the tokenizer interface build_canvas needs."""

    def encode(self, text):
        return list(text.encode("utf-8"))


@FUZZ
@given(patterns)
def test_parse_pattern_returns_pieces_or_a_user_error(text):
    try:
        result = parse_pattern(text)
    except UserError:
        return
    assert all((isinstance(p, str) and p) or (isinstance(p, int) and p >= 1) for p in result)


@FUZZ
@given(patterns, st.one_of(st.none(), st.integers(-5, 80)), st.one_of(st.none(), patterns),
       st.one_of(st.none(), st.integers(-3, 20)))
def test_build_canvas_returns_a_canvas_or_a_user_error(prompt, length, infill, span):
    try:
        canvas = build_canvas(ByteTokenizer(), prompt, length, 999, infill=infill, span=span)
    except UserError:
        return
    assert canvas.tokens.shape == canvas.fixed.shape and canvas.length >= 1
    assert (canvas.tokens[~canvas.fixed] == 999).all()


keys = st.sampled_from(["train.lr", "train.max_steps", "model.d_model", "model.tie", "data.source", "objective.name",
                        "train", "model", "x.y", "train.lr.z", "", ".", "model..d_model", "train.seed"])
values = st.one_of(st.text(max_size=10), st.sampled_from(["1e-3", "null", "[1, 2", "{a: 1}", "true", "-1", "0",
                                                          "nan", ".inf", "&a x", "*a", "!!python/object:os.system",
                                                          "2.5", "'", "'a'"]))
overrides = st.lists(st.one_of(st.tuples(keys, values).map("=".join), st.text(max_size=10)), max_size=4)


@FUZZ
@given(overrides)
def test_overrides_give_a_config_or_a_user_error(items):
    try:
        cfg = load_config(RunConfig, None, items)
    except UserError:
        return
    assert isinstance(cfg, RunConfig)
