"""What the user sees: one line per directory as it finishes and a final count, or one JSON document."""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import asdict
from typing import Any, TextIO

import orjson
from veeksha.shared.redact import redact_url
from veeksha.uploader.groups import CAPSEARCH_SUMMARY, SWEEP_SUMMARY
from veeksha.uploader.run_files import shown
from veeksha.uploader.worker import DRY_RUN, FAILED, SKIPPED, UPLOADED, Outcome

_KIND_LABEL = {SWEEP_SUMMARY: " (sweep summary)", CAPSEARCH_SUMMARY: " (capacity-search summary)"}


def display_path(path: str) -> str:
    """Relative to the working directory when below it (shorter cron lines), else absolute."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def _printable(value: Any) -> Any:
    """A result with every text escaped: a name that is not UTF-8 must not break a line or the JSON.
    A URL is shown without its user-info (a proxy's password in the W&B server's URL)."""
    if isinstance(value, str):
        return shown(redact_url(value))
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


class Reporter:
    def __init__(self, as_json: bool, out: TextIO | None = None) -> None:
        self.as_json = as_json
        self.out = out or sys.stdout
        self.outcomes: list[Outcome] = []

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        if not self.as_json:
            where = shown(display_path(outcome.path)) + _KIND_LABEL.get(outcome.kind, "")
            lines = [f"{outcome.status:<12} {where}  {shown(outcome.detail)}".rstrip()]
            lines += [f"{'':<12} warning: {shown(w)}" for w in outcome.warnings]
            print("\n".join(lines), file=self.out, flush=True)

    def counts(self) -> Counter[str]:
        return Counter(o.status for o in self.outcomes)

    def exit_code(self) -> int:
        return 1 if self.counts()[FAILED] else 0

    def finish(self) -> int:
        counts = self.counts()
        if self.as_json:
            doc = {
                "results": [{k: _printable(v) for k, v in asdict(o).items()} for o in self.outcomes],
                "counts": {k: counts[k] for k in (UPLOADED, SKIPPED, FAILED, DRY_RUN)},
                "exit_code": self.exit_code(),
            }
            self.out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            parts = [f"{counts[UPLOADED]} uploaded", f"{counts[SKIPPED]} skipped", f"{counts[FAILED]} failed"]
            if counts[DRY_RUN]:
                parts.insert(0, f"{counts[DRY_RUN]} would upload")
            total = len(self.outcomes)
            noun = "directory" if total == 1 else "directories"
            print(f"veeksha-upload: {', '.join(parts)} ({total} {noun})", file=self.out, flush=True)
        return self.exit_code()
