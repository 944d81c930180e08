"""Artifacts on disk: atomic JSON writes, the run manifest, and the output-folder lock."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from instructkit.errors import UserError

TRACKED_PACKAGES = (
    "torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes",
    "lm_eval", "litgpt", "openai", "gguf", "rouge_score", "scikit-learn",
)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write JSON to a temp file beside `path`, fsync it, then rename: readers never see half a file."""
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temp file beside `path`, fsync it, then rename over `path`; on a full disk
    or an unwritable folder, a message that names the file and nothing left behind."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; artifacts are meant to be shared
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_text(path: str | Path) -> str:
    """An input file's text, without the BOM that Excel and Notepad put first; a file that is not
    there, not readable or not UTF-8 is a message that names it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not valid UTF-8 (byte {exc.start}); save it as UTF-8") from exc


def parse_json(text: str, path: str | Path, line: int | None = None) -> Any:
    """A JSON document: a file's text, or its line `line` (JSONL); bad JSON is a message that names
    the file, the line and the place."""
    where = f"{path}: line {line}" if line else str(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        place = f"column {exc.colno}" if line else f"line {exc.lineno}, column {exc.colno}"
        raise UserError(f"{where}: not valid JSON ({place}: {exc.msg})") from exc
    except RecursionError as exc:  # the parser recurses once per level: [[[[... a hundred thousand deep
        raise UserError(f"{where}: JSON nested too deeply to read") from exc
    except ValueError as exc:  # an integer of more than 4300 digits
        raise UserError(f"{where}: JSON that cannot be read ({exc})") from exc


def read_json(path: str | Path) -> Any:
    """Read a JSON artifact, turning a missing or corrupt file into a message that names it."""
    return parse_json(read_text(path), path)


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# CPU flags that decide how fast a CPU runs our matrix products (fp32 with AVX2 / AVX-512, bf16 natively).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_description() -> dict[str, Any]:
    """The CPU's model and the flags that matter for speed: every timing is recorded beside them."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:  # not Linux: the model name from platform is what there is
        pass
    return {"model": model, "speed_flags": [f for f in SPEED_FLAGS if f in flags], "cores": os.cpu_count()}


def manifest(**fields: Any) -> dict[str, Any]:
    """What a person needs to reproduce an artifact: the given fields plus versions and machine."""
    return {
        **fields,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_description(),
        "versions": library_versions(),
    }


def is_main_process() -> bool:
    """False on the worker ranks of a torchrun/accelerate job, which train but neither print nor write."""
    return int(os.environ.get("RANK", "0")) == 0


def output_dir_problem(output_dir: str | Path) -> str | None:
    """Why a stage could not make or write its output folder, found before anything loads and
    without writing anything; None when it can."""
    path = Path(output_dir)
    try:
        existing = next(p for p in (path, *path.parents) if p.exists())
    except OSError as exc:
        return f"--output-dir {output_dir}: cannot reach it ({exc.strerror})"
    if not existing.is_dir():
        return f"--output-dir {output_dir}: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"--output-dir {output_dir}: cannot write to {existing} (permission denied)"
    return None


@contextmanager
def output_lock(output_dir: str | Path, stage: str, timeout: float = 0) -> Iterator[None]:
    """Hold `<output_dir>/.<stage>.lock` so a second run of the same stage stops instead of racing
    (or, with a timeout, waits that long for it)."""
    output_dir = Path(output_dir)
    if not is_main_process():  # rank 0 holds it for the whole job
        yield
        return
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {output_dir}: {exc.strerror}") from exc
    lock = FileLock(str(output_dir / f".{stage}.lock"))
    try:
        lock.acquire(timeout=timeout)
    except Timeout as exc:
        raise UserError(
            f"another {stage} run is using {output_dir} (lock {lock.lock_file}); "
            "wait for it to finish or choose another --output-dir"
        ) from exc
    except OSError as exc:  # a folder this user may not write to
        raise UserError(f"cannot write to output folder {output_dir}: {exc.strerror}") from exc
    try:
        yield
    finally:
        lock.release()
