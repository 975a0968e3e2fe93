"""A batch job's manifest: one JSON line per input, the job's memory across crashes and reruns (no Ray in here).

Each record names the input (its key, the path relative to the source folder, plus its size, mtime and sha256),
the output (relative to the destination), the method, settings and seed, the image's numbers (PSNR, SSIM, L-inf),
its ``status`` (``done``, ``error`` or ``skipped``), the error line, the worker and the seconds. Only the job's
driver writes it, one record at a time, appended, flushed and fsynced after the output file is in place, so after
a crash (of a worker or of the driver) every ``done`` record has its complete output. A torn last line (power
loss while appending) is ignored on reading; a later record for the same input replaces the earlier one (an input
that changed, an error tried again, ``--overwrite``) and :meth:`Manifest.compact` rewrites the file atomically with
one line per input, so a finished job's manifest lists every input exactly once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from protect_core.errors import StyleCloakError

NAME = "stylecloak-manifest.jsonl"
FORMAT = 1


class Manifest:
    """The records of one job, by input key; :meth:`add` appends durably."""

    def __init__(self, path):
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        self.lines = 0
        self.torn = False
        self._fp = None
        if self.path.is_file():
            self._read()

    def _read(self) -> None:
        try:
            raw = self.path.read_bytes()
        except OSError as e:
            raise StyleCloakError(f"cannot read the manifest '{self.path}': {e.strerror or e}") from None
        for n, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = rec["input"]
            except (ValueError, KeyError, TypeError):
                if not raw.endswith(b"\n") and n == raw.count(b"\n") + 1:
                    self.torn = True      # the last append was cut short: that input was never recorded
                    continue
                raise StyleCloakError(f"the manifest '{self.path}' line {n} is not a StyleCloak record; it is "
                                      "not a manifest of this tool, or it was edited: move it away to start "
                                      "over") from None
            self.records[key] = rec
            self.lines += 1

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def add(self, rec: dict) -> None:
        """Append one record (the last line wins for its input) and make it durable before returning."""
        if self._fp is None:
            if self.torn:
                self.compact()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fp = open(self.path, "ab")
        self._fp.write(json.dumps({"format": FORMAT, **rec}, sort_keys=True, default=str).encode() + b"\n")
        self._fp.flush()
        os.fsync(self._fp.fileno())
        self.records[rec["input"]] = rec
        self.lines += 1

    def compact(self) -> bool:
        """Rewrite with one line per input (atomically) if some input has several lines or the last is torn."""
        if self.lines == len(self.records) and not self.torn:
            return False
        from protect_core.atomic import atomic_write_text

        self.close()
        text = "".join(json.dumps({"format": FORMAT, **r}, sort_keys=True, default=str) + "\n"
                       for r in sorted(self.records.values(), key=lambda r: r["input"]))
        atomic_write_text(self.path, text)
        self.lines, self.torn = len(self.records), False
        return True

    def close(self) -> None:
        if self._fp is not None:
            self._fp.close()
            self._fp = None
