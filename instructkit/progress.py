"""A resumable work log: finished items appended as JSON lines and fsynced, so a killed stage
loses at most the batch in flight and its rerun picks up where it stopped."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import UserError

Key = tuple[str | int, ...]


class ProgressLog:
    """`done` maps an item's key (a tuple such as ("base", 17)) to its finished value.

    The first line records the settings; a rerun with other settings must not mix its results in.
    """

    def __init__(self, path: Path, settings: dict):
        self.path = path
        self.done: dict[Key, Any] = {}
        lines = self._complete_lines() if path.is_file() else []
        if not lines:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            self._append([{"settings": settings}])
            return
        if json.loads(lines[0]) != {"settings": settings}:
            raise UserError(f"{path} holds partial results made with other settings; "
                            "rerun with the same settings to resume, or pass --overwrite")
        for line in lines[1:]:
            entry = json.loads(line)
            self.done[tuple(entry["key"])] = entry["value"]

    def _complete_lines(self) -> list[str]:
        """The log's lines, less a last one cut short by a kill (which is cut from the file too)."""
        text = self.path.read_text(encoding="utf-8")
        if not text.endswith("\n"):
            text = text[:text.rfind("\n") + 1]
            with self.path.open("r+", encoding="utf-8") as f:
                f.truncate(len(text.encode("utf-8")))
        return text.splitlines()

    def add(self, items: list[tuple[Key, Any]]) -> None:
        self._append([{"key": list(key), "value": value} for key, value in items])
        self.done.update(items)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def _append(self, entries: list[dict]) -> None:
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # a full disk: what is logged so far stays usable for the rerun
            raise UserError(f"cannot write {self.path}: {exc.strerror}; finished work is kept, "
                            "rerun the same command once there is room") from exc
