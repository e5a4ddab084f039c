"""Finished evaluation sections survive an interruption: each one is written to ``OUT/results.json``
as soon as it completes, together with the settings it was computed with; a re-run with identical
settings (same options, same checkpoints) keeps it instead of computing it again.

``results["completed"]`` maps a section name (likelihood, generate, infill, speed) to the settings
it depends on (SECTION_OPTIONS and the checkpoints' descriptions); any change recomputes it.
"""
from __future__ import annotations

import json

from diffmamba.eval.report import write_results

# The options each section's numbers depend on (so `eval likelihood` and `eval compare` share one).
_COMMON = ("diffusion", "ar", "systems", "data", "seq_len", "max_rows", "device", "dtype", "seed", "batch_size")
_SAMPLING = ("samplers", "steps", "top_p", "temperature", "length")
SECTION_OPTIONS = {
    "likelihood": _COMMON + ("repeats",),
    "generate": _COMMON + _SAMPLING + ("judge", "tasks", "num_samples", "prompt_len"),
    "infill": _COMMON + ("infill_span", "infill_rows", "infill_sampler", "repeats"),
    "speed": _COMMON + _SAMPLING + ("speed_samplers", "speed_steps", "batch_sizes", "lengths", "contexts",
                                    "speed_prompt_len", "warmup", "speed_repeats", "cuda_graph"),
}


def signatures(options: dict, checkpoints: dict) -> dict:
    """section -> the settings its numbers depend on, as plain JSON values."""
    return {section: json.loads(json.dumps({"options": {k: options.get(k) for k in names},
                                            "checkpoints": checkpoints}, default=str))
            for section, names in SECTION_OPTIONS.items()}


class SectionStore:
    def __init__(self, out: str, results: dict, previous: dict, settings: dict):
        self.out = out
        self.results, self.settings = results, settings
        self.previous_done = dict(previous.get("completed") or {})
        results["completed"] = {k: v for k, v in self.previous_done.items() if v == settings.get(k)}

    def done(self, section: str) -> bool:
        """True when an earlier run finished ``section`` with the same settings (its numbers are kept)."""
        if self.previous_done.get(section) == self.settings[section]:
            print(f"  {section}: kept from an earlier run into this folder with the same settings", flush=True)
            return True
        return False

    def finish(self, section: str, **entries) -> None:
        """Record ``entries`` (top-level results keys) as the finished ``section`` and write results.json."""
        self.results.update(entries)
        self.results["completed"][section] = self.settings[section]
        write_results(self.results, self.out)
