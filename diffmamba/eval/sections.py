"""Finished evaluation sections survive an interruption: each one is written to ``OUT/results.json``
as soon as it completes, together with the settings it was computed with; a re-run with identical
settings (same options, same checkpoints) keeps it instead of computing it again.

``results["completed"]`` maps a section name (likelihood, generate, infill, speed) to the signature
of its settings. Any change of an option or of a checkpoint's description recomputes the section.
"""
from __future__ import annotations

import json
import os

# Options that do not change any number (where the results go, how the command was spelled).
_NOT_SETTINGS = ("out", "command")


def signature(options: dict, checkpoints: dict) -> dict:
    return json.loads(json.dumps({"options": {k: v for k, v in options.items() if k not in _NOT_SETTINGS},
                                  "checkpoints": checkpoints}, default=str))


class SectionStore:
    def __init__(self, out: str, results: dict, previous: dict, settings: dict):
        self.path = os.path.join(out, "results.json")
        self.results, self.settings = results, settings
        self.previous_done = dict(previous.get("completed") or {})
        results["completed"] = {k: v for k, v in self.previous_done.items() if v == settings}

    def done(self, section: str) -> bool:
        """True when an earlier run finished ``section`` with the same settings (its numbers are kept)."""
        if self.previous_done.get(section) == self.settings:
            print(f"  {section}: kept from an earlier run into this folder with the same settings", flush=True)
            return True
        return False

    def finish(self, section: str, **entries) -> None:
        """Record ``entries`` (top-level results keys) as the finished ``section`` and write results.json."""
        self.results.update(entries)
        self.results["completed"][section] = self.settings
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.results, f, indent=1, default=str)
            f.write("\n")
        os.replace(tmp, self.path)
