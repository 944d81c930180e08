"""Reruns you can trust, shared by stages 2, 3 and 4.

A stage's finished output is reused only while the fingerprints of its inputs and its settings
match the ones recorded beside it; otherwise the stage says what changed and does the work again.
Work in progress goes to a log of finished items, appended as JSON lines and fsynced, so a killed
stage loses at most the batch in flight and its rerun picks up where it stopped. `--overwrite`
only declines to reuse the finished output; it never discards a matching log. `--restart` does.

A request that got no answer (a server down after its retries) is never logged as a result: the
output is written with it missing, recorded as incomplete, and the rerun asks it again.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instructkit.errors import UserError
from instructkit.runs.artifacts import read_json, write_json_atomic
from instructkit.runs.fingerprints import changed, same_inputs, same_settings, settings_changes, sha256_file

Key = tuple[str | int, ...]


class ProgressLog:
    """`done` maps an item's key (a tuple such as ("base", 17)) to its finished value.

    The first line records the settings and input fingerprints the items were made with, and the
    run's id; work made otherwise is never mixed in.
    """

    def __init__(self, path: Path, settings: dict, inputs: dict):
        self.path, self.settings, self.inputs = path, settings, inputs
        self.done: dict[Key, Any] = {}
        self.failed: dict[Key, Any] = {}  # asked this run, no answer came back: not logged
        self.answered = 0  # items this run's own work logged (reused ones not counted)
        header = read_header(path)
        if header is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            self.run_id = uuid.uuid4().hex
            self._append([{"settings": settings, "inputs": inputs, "run_id": self.run_id}])
            return
        if not same_settings(header.get("settings"), settings) or not same_inputs(header.get("inputs"), inputs):
            raise UserError(f"{path} holds partial results made with other settings; "
                            "rerun with the same settings to resume, or pass --restart to discard them")
        self.run_id = header["run_id"]
        for line in self._complete_lines()[1:]:
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
        for key, _ in items:
            self.failed.pop(key, None)

    def settle(self, items: list[tuple[Key, Any]], failed: Callable[[Any], bool]) -> None:
        """Log this run's answered items; keep the failed ones (their value says why) out of the log."""
        self.add([(key, value) for key, value in items if not failed(value)])
        self.answered += sum(not failed(value) for _, value in items)
        self.failed.update((key, value) for key, value in items if failed(value))

    def results(self) -> dict[Key, Any]:
        """Every item's value for the output: the logged ones, and why the failed ones have none."""
        return {**self.failed, **self.done}

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    @contextmanager
    def attempt(self) -> Iterator[None]:
        """Work that fills the log: a UserError before anything finished (a refused API key, say)
        leaves no log behind, so the corrected rerun starts clean."""
        try:
            yield
        except UserError:
            if not self.done:
                self.remove()
            raise

    def run(self, items: list[Key], chunk: int, label: str, work: Callable[[list[Key]], list[tuple[Key, Any]]],
            failed: Callable[[Any], bool] = lambda value: False) -> None:
        """Do the items the log lacks, `chunk` at a time, logging each chunk as it finishes."""
        todo = [item for item in items if item not in self.done]
        for start in range(0, len(todo), chunk):
            self.settle(work(todo[start:start + chunk]), failed)
            print(f"[{label}] {len(items) - len(todo) + min(start + chunk, len(todo))}/{len(items)}"
                  + (f" ({len(self.failed)} without an answer)" if self.failed else ""), flush=True)

    def _append(self, entries: list[dict]) -> None:
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # a full disk: what is logged so far stays usable for the rerun
            raise UserError(f"cannot write {self.path}: {exc.strerror}; finished work is kept, "
                            "rerun the same command once there is room") from exc


def holds_results(path: Path) -> bool:
    """Whether a progress log has a finished item after its header (a run that crashed on a bad
    setting before its first batch has none, and blocks nothing)."""
    with path.open(encoding="utf-8") as f:
        f.readline()
        return f.readline().endswith("\n")


def read_header(path: Path) -> dict | None:
    """A progress log's first line, or None when there is no usable log."""
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as f:
        first = f.readline()
    if not first.endswith("\n"):
        return None
    try:
        header = json.loads(first)
    except json.JSONDecodeError:
        return None
    return header if isinstance(header, dict) and "run_id" in header else None


def progress_path(final_path: Path) -> Path:
    return final_path.parent / f".{final_path.name}.progress.jsonl"


def meta_path(final_path: Path) -> Path:
    return final_path.with_name(final_path.name.replace(".json", ".meta.json"))


@dataclass
class Work:
    """What a stage must do for one output: reuse the finished file, or fill `progress`."""

    final_path: Path
    settings: dict
    inputs: dict
    progress: ProgressLog | None  # None: the finished output is reused as it is
    finished: dict | None  # the finished output's record, when there is one (stage 4 reuses its items)

    def finish(self, data: Any, meta: dict) -> None:
        """Write the output, then its record (settings, inputs, the output's digest), then drop the log.

        In that order a kill between the steps leaves a record that does not match, and the rerun
        rebuilds the output from the log instead of trusting it. An output with failed requests
        keeps its log and is recorded as incomplete, so the rerun asks just those again; a run
        whose every request failed exits non-zero after writing what it has.
        """
        progress = self.progress
        write_json_atomic(self.final_path, data)
        record = {**meta, "settings": self.settings, "inputs": self.inputs, "run_id": progress.run_id,
                  "output_sha256": sha256_file(self.final_path)}
        if progress.failed:
            record["failed_items"] = len(progress.failed)
        write_json_atomic(meta_path(self.final_path), record)
        if not progress.failed:
            progress.remove()
            return
        why = next(iter(progress.failed.values()))
        message = (f"{len(progress.failed)} requests got no answer ({_reason(why)}); {self.final_path} has them "
                   "missing, and the same command asks just those again")
        if not progress.answered:
            raise UserError(f"every request of this run failed: {message}")
        print(f"warning: {message}", flush=True)


def read_finished(final_path: Path) -> dict | None:
    """The record of a finished output when it describes the output on disk, else None."""
    record_path = meta_path(final_path)
    if not final_path.is_file() or not record_path.is_file():
        return None
    try:
        record = read_json(record_path)
    except UserError:
        return None
    if not isinstance(record, dict) or record.get("output_sha256") != sha256_file(final_path):
        return None
    return record


def open_work(final_path: Path, settings: dict, inputs: dict, *, overwrite: bool, restart: bool,
              stage: str, verb: str, outcome_settings: dict | None = None) -> Work:
    """Decide whether `final_path` can be reused and open the progress log for the work if not.

    `outcome_settings` decide the output from the logged work, not the work itself (a threshold
    applied at the end): a change remakes the output, yet resumes from the log.
    Prints one line for each decision a user would want to know about: a finished output reused or
    made again (and why), partial results resumed or discarded.
    """
    work_settings, settings = settings, settings | (outcome_settings or {})
    finished = read_finished(final_path)
    log_path = progress_path(final_path)
    header = read_header(log_path)
    if header and finished and header["run_id"] == finished.get("run_id") and not (
            finished.get("failed_items") and same_settings(header.get("settings"), work_settings)
            and same_inputs(header.get("inputs"), inputs)):
        log_path.unlink()  # left by a run killed after writing its output, or an incomplete one redone otherwise
        header = None

    if finished and not overwrite:
        reason = why_redo(finished, settings, inputs, f"{final_path.name} was made")
        if reason is None:
            if header:
                print(f"note: {log_path} holds a partial --overwrite run; rerun with --overwrite to continue it")
            print(f"{stage} already finished: {final_path} (same inputs and settings; --overwrite does it again)")
            return Work(final_path, settings, inputs, None, finished)
        print(f"{reason}: {verb} again")
    elif final_path.is_file() and not finished:
        print(f"{final_path} has no record of what it was made from that matches it (an older version, or a "
              f"hand edit): {verb} again")

    if header:
        if not same_inputs(header.get("inputs"), inputs):
            print(f"note: discarding the partial results in {log_path}: "
                  f"{', '.join(changed(header.get('inputs'), inputs))} changed since they were made")
            log_path.unlink()
        elif restart:
            print(f"note: --restart: discarding the partial results in {log_path}")
            log_path.unlink()
        elif not same_settings(header.get("settings"), work_settings) and not holds_results(log_path):
            print(f"note: {log_path} was started with other settings and holds no results: starting afresh")
            log_path.unlink()
        elif not same_settings(header.get("settings"), work_settings):
            raise UserError(f"{log_path} holds partial results made with other settings "
                            f"({'; '.join(settings_changes(header.get('settings'), work_settings))}); "
                            "rerun with the same settings to resume, or pass --restart to discard them")
        else:
            print(f"resuming from {log_path}")
    return Work(final_path, settings, inputs, ProgressLog(log_path, work_settings, inputs), finished)


def base_part_holds(finished: dict | None, progress: ProgressLog) -> bool:
    """Whether the base model's part of a finished output still holds for this run: the same
    settings and the same inputs but the trained models (a retraining changes only those)."""
    if not finished or "base" not in finished.get("models", []) or not same_settings(finished.get("settings"), progress.settings):
        return False
    def others(inputs: dict | None) -> dict:  # the trained models' inputs left out
        return {name: entry for name, entry in (inputs or {}).items() if name not in ("finetuned", "preference")}
    return same_inputs(others(finished.get("inputs")), others(progress.inputs))


def why_redo(record: dict, settings: dict, inputs: dict, made: str) -> str | None:
    """One line saying why a finished output no longer stands, or None if it still does; `made`
    says what happened when it was recorded ("test_base_model.json was made")."""
    if "inputs" not in record:
        return f"{made} without a record of its inputs (an older version)"
    names = changed(record["inputs"], inputs)
    if names:
        return f"{', '.join(names)} changed since {made}"
    if not same_settings(record.get("settings"), settings):
        return f"settings changed since {made} ({'; '.join(settings_changes(record.get('settings'), settings))})"
    if record.get("failed_items"):
        return f"{record['failed_items']} requests got no answer when {made}"
    return None


def _reason(value: Any) -> str:
    """The error a failed item's value carries (in a dict, or as an attribute)."""
    return str(value.get("error") if isinstance(value, dict) else getattr(value, "error", value))[:300]
