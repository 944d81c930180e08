"""What an artifact was made from: content fingerprints of its inputs, recorded in its manifest and
compared on every rerun, so a result is reused only while what it was computed from is unchanged.

An input is a small dict: `{"path": ..., "sha256": ...}` for a file or folder on disk, or a model
reference (`{"reference": ..., "source": ...}`) for a model we do not hash (a hub id, a base model of
many gigabytes: its name, and for a local folder its config and file sizes, stand for it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from instructkit.models.references import ResolvedModel

# Files that make up a model or adapter folder (or a folder of task definitions); logs, plots and
# summaries change with every run and say nothing about the weights.
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".jinja", ".txt", ".yaml", ".yml", ".jsonl", ".csv", ".py")
NOT_MODEL_FILES = ("training_summary.json", "training_args.bin")
# Subfolders that are artifacts of their own (an adapter's training checkpoints and merged model).
NOT_MODEL_FOLDERS = ("checkpoints", "merged")
_digests: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """The file's sha256, computed once per process for an unchanged file (a merged model is GBs)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def _folder_files(folder: Path) -> list[Path]:
    """A model, adapter or task folder's defining files, subfolders included (an lm-eval task
    folder's YAML `include`s its neighbours), by path relative to the folder."""
    files = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.is_symlink() and entry.is_dir():
            continue
        if entry.is_dir() and entry.name not in NOT_MODEL_FOLDERS and not entry.name.startswith("checkpoint-"):
            files += _folder_files(entry)
        elif entry.is_file() and entry.suffix in MODEL_FILE_SUFFIXES and entry.name not in NOT_MODEL_FILES:
            files.append(entry)
    return files


def _folder_sha256(folder: Path) -> str:
    """One digest over a folder's defining files and their paths inside it: the folder's content,
    wherever it lies (a copied run folder's adapter is the same adapter)."""
    digest = hashlib.sha256()
    for file in _folder_files(folder):
        digest.update(f"{file.relative_to(folder).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def path_input(path: str | Path) -> dict:
    """The fingerprint of a file or a model/adapter folder; a missing path has none."""
    path = Path(path)
    if path.is_dir():
        digest = _folder_sha256(path)
    elif path.is_file():
        digest = sha256_file(path)
    else:
        digest = None
    return {"path": str(path.resolve()), "sha256": digest}


def reference_input(reference: str) -> dict:
    """A model given by the user: fingerprinted when it is on disk, else named (a hub id)."""
    return path_input(reference) if Path(reference).expanduser().exists() else {"reference": reference, "source": "hub"}


def finetuned_input(merged: str, adapter: Path) -> dict:
    """The finetuned model a later stage uses: a merged model when given, else stage 1's adapter."""
    return reference_input(merged) if merged else path_input(adapter)


def model_input(model: ResolvedModel) -> dict:
    """A base model by reference: a local folder adds its config's digest and its files' sizes."""
    entry = {"reference": model.reference, "source": model.source}
    folder = Path(model.path)
    if model.source != "hub" and folder.is_dir():
        entry["path"] = str(folder.resolve())
        entry["config_sha256"] = sha256_file(folder / "config.json")
        entry["file_sizes"] = {f.name: f.stat().st_size for f in sorted(folder.iterdir()) if f.is_file()}
    return entry


def label(name: str, entry: dict) -> str:
    """How an input is named in a message: its path as the user would type it, or the model name."""
    if "sha256" in entry:
        path = Path(entry["path"])
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)
    if "reference" in entry:
        return f"the {name.replace('_', ' ')} ({entry['reference']})"
    return name.replace("_", " ")


def same_input(recorded: dict | None, current: dict | None) -> bool:
    """Whether two fingerprints name the same input. A file or folder is its content: the same bytes
    at another path (a copied run folder, a moved checkout, a copied data file) are the same input."""
    if recorded and current and recorded.get("sha256") and current.get("sha256"):
        return recorded["sha256"] == current["sha256"]
    return recorded == current


def same_inputs(recorded: dict | None, current: dict | None) -> bool:
    recorded, current = recorded or {}, current or {}
    return recorded.keys() == current.keys() and all(same_input(recorded[k], current[k]) for k in current)


def changed(recorded: dict | None, current: dict) -> list[str]:
    """Labels of the inputs whose fingerprint differs between a record and now."""
    recorded = recorded or {}
    return [label(name, entry) for name, entry in current.items() if not same_input(recorded.get(name), entry)] + [
        label(name, entry) for name, entry in recorded.items() if name not in current]


# Settings that name an input file: its fingerprint among the inputs decides, not where it lies.
PATH_SETTINGS = ("data", "seeds", "exclude")


def _comparable(settings: dict | None) -> dict:
    return {k: v for k, v in (settings or {}).items() if k not in PATH_SETTINGS}


def same_settings(recorded: dict | None, current: dict | None) -> bool:
    return _comparable(recorded) == _comparable(current)


def stale_on_disk(recorded: dict | None) -> list[str]:
    """Labels of the recorded file and folder inputs that hold something else now (the report's
    check). An input no longer at its recorded path is not flagged: reuse compares files by content,
    so a moved file says nothing about the result."""
    return [label(name, entry) for name, entry in (recorded or {}).items()
            if "sha256" in entry and Path(entry["path"]).exists() and path_input(entry["path"])["sha256"] != entry["sha256"]]


def settings_changes(recorded: dict | None, current: dict) -> list[str]:
    """`name: old -> new` for every setting that differs."""
    recorded, current = _comparable(recorded), _comparable(current)
    keys = [k for k in current if recorded.get(k) != current[k]] + [k for k in recorded if k not in current]
    return [f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in keys]
