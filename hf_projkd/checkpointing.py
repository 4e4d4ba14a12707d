"""Checkpoints that are never lost, never silently wrong: manifests with checksums, run fingerprints, a run lock.

- **Manifest** (``checkpoint_complete.json``), written last and atomically (temporary file, fsync, rename) after
  every other file of ``checkpoint-<step>`` is flushed: each file's size and SHA-256. A folder without it was being
  written when the run stopped; a file whose bytes changed (truncated, zeroed, overwritten) fails its checksum.
  Resuming from either is refused with the name of the file and of the newest good checkpoint.
- **Fingerprint** (``run_fingerprint.json``, inside each checkpoint): teacher identity (name, class, weights digest),
  student architecture (parameter names and shapes) and the projector / norm / loss settings. Resuming with a
  different one is refused with a message naming what differs.
- **Lock** (``output_dir/.hf_projkd.lock``): an exclusive ``flock`` held while a run trains, so a second run with
  the same ``output_dir`` is refused instead of overwriting the first one's checkpoints. The operating system
  drops the lock when the process dies, so a crashed run never leaves it stuck.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_MANIFEST = "checkpoint_complete.json"
FINGERPRINT_FILE = "run_fingerprint.json"
LOCK_FILE = ".hf_projkd.lock"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
_CHUNK = 1 << 22

logger = logging.getLogger(__name__)


class IncompleteCheckpointError(OSError):
    """A checkpoint folder that was not completely written (killed mid-save) or was damaged afterwards."""


class ResumeMismatchError(ValueError):
    """A checkpoint written by a run with another teacher, student architecture or method settings."""


class OutputDirInUseError(RuntimeError):
    """Another live run holds the output directory."""


# -- manifest -----------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _files_of(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != CHECKPOINT_MANIFEST and not p.name.endswith(".tmp")]


def mark_checkpoint_complete(folder: str | os.PathLike, step: int | None = None) -> Path:
    """Flush every file of ``folder`` to disk, then atomically write the manifest (sizes + SHA-256) marking it
    complete. Also the way to accept, by hand, a checkpoint you know is complete."""
    folder = Path(folder)
    files = {}
    for name in _files_of(folder):
        _fsync(folder / name)
        files[name] = {"bytes": (folder / name).stat().st_size, "sha256": _sha256(folder / name)}
    manifest = folder / CHECKPOINT_MANIFEST
    temporary = manifest.with_name(manifest.name + ".tmp")
    temporary.write_text(json.dumps({"step": step, "files": files}, indent=1))
    _fsync(temporary)
    os.replace(temporary, manifest)
    return manifest


def unmark_checkpoint(folder: str | os.PathLike) -> None:
    """Remove the manifest before (re)writing into ``folder``, so a half-overwritten folder never looks complete."""
    Path(folder, CHECKPOINT_MANIFEST).unlink(missing_ok=True)


def checkpoint_problem(folder: str | os.PathLike, verify_checksums: bool = True) -> str | None:
    """Why ``folder`` is not a complete, intact checkpoint, or None when its manifest and files agree."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} does not exist or is not a folder"
    manifest = folder / CHECKPOINT_MANIFEST
    if not manifest.is_file():
        return (f"{folder} has no {CHECKPOINT_MANIFEST}: it was being written when the run stopped (or was not written "
                "by hf_projkd's DistillationTrainer)")
    try:
        recorded: dict[str, Any] = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as error:
        return f"{manifest} is unreadable ({error})"
    for name, entry in recorded.items():
        path = folder / name
        size, checksum = (entry, None) if isinstance(entry, int) else (entry["bytes"], entry.get("sha256"))
        if not path.is_file():
            return f"{path} is missing (the manifest lists it with {size} bytes)"
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, the manifest recorded {size}: it is truncated or altered"
        if verify_checksums and checksum is not None and _sha256(path) != checksum:
            return (f"{path} does not match the checksum the manifest recorded: its bytes were changed after it was "
                    "written (disk error, or overwritten)")
    return None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-<step>`` folders of ``output_dir``, oldest step first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT_NAME.match(p.name))]
    return [path for _, path in sorted(found)]


def latest_complete_checkpoint(output_dir: str | os.PathLike, verify_checksums: bool = False) -> Path | None:
    """The newest checkpoint whose manifest and files agree; newer incomplete ones are logged and skipped."""
    for folder in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(folder, verify_checksums)
        if problem is None:
            return folder
        logger.warning("Skipping the incomplete checkpoint %s: %s.", folder.name, problem)
    return None


def check_safetensors_file(path: Path) -> None:
    """A truncated or corrupt ``.safetensors`` file is an ``OSError`` naming it (the header must describe exactly
    the bytes the file has), before a library reports it without a name."""
    try:
        _check_safetensors_layout(path)
    except (OSError, ValueError) as error:
        raise OSError(f"{path} is truncated or corrupt ({error}). Re-save or re-download it.") from error


def _check_safetensors_layout(path: Path) -> None:
    """``ValueError`` with the reason when the header does not describe exactly the bytes the file has."""
    size = path.stat().st_size
    with open(path, "rb") as raw:
        header = int.from_bytes(raw.read(8), "little")
        if not 0 < header <= size - 8:
            raise ValueError(f"its header length {header} does not fit in its {size} bytes")
        try:
            meta = json.loads(raw.read(header))
            end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"its header is not safetensors JSON ({error})") from error
    if 8 + header + end != size:
        raise ValueError(f"the file has {size} bytes, its header describes {8 + header + end}")


def check_readable(folder: Path) -> None:
    """Every file of a checkpoint parses: safetensors headers match their sizes, JSON files load, and the zip
    archives ``torch.save`` writes (optimizer, scheduler, RNG states) pass their CRC checks (nothing is unpickled)."""
    for path in sorted(folder.iterdir()):
        try:
            if path.suffix == ".safetensors":
                _check_safetensors_layout(path)
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix in (".pt", ".pth", ".bin"):
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    raise ValueError(f"its entry {bad} fails its CRC check")
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise OSError(f"{path} is truncated or corrupt ({error}), although its manifest accepts it (it was "
                          "accepted by hand, or damaged before the manifest was written)") from error


def verify_checkpoint(folder: str | os.PathLike) -> Path:
    """``folder`` if it is complete, intact and readable, else an error saying which one to use instead."""
    folder = Path(folder)
    problem = checkpoint_problem(folder)
    accept = (" If you know this checkpoint is complete, accept it with "
              "hf_projkd.checkpointing.mark_checkpoint_complete(folder).")
    if problem is None:
        try:
            check_readable(folder)
            return folder
        except OSError as error:
            problem, accept = str(error), ""
    good = next((c for c in reversed(list_checkpoints(folder.parent)) if c != folder and not checkpoint_problem(c)),
                None)
    hint = (f"Resume from {good} (the newest intact checkpoint), or pass resume_from_checkpoint=True to pick it."
            if good is not None else "There is no intact checkpoint beside it: resume from another checkpoint (or a "
            "backup of this one), or start a new run.")
    raise IncompleteCheckpointError(f"Cannot resume from {folder}: {problem}. {hint}{accept}")


def resolve_resume_checkpoint(
    resume_from_checkpoint: str | bool | None, output_dir: str | os.PathLike, overwrite_output_dir: bool = False,
    is_main_process: bool = True,
) -> str | None:
    """The checkpoint folder to resume from, verified; ``True`` / ``"true"`` means the newest intact one.

    Starting afresh (None / False) in an ``output_dir`` that holds checkpoints is refused unless
    ``overwrite_output_dir`` (which deletes them): rotation would delete them anyway, and they are probably the run
    the user meant to resume.
    """
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() in ("true", "false", ""):
        resume_from_checkpoint = resume_from_checkpoint.lower() == "true"
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        existing = list_checkpoints(output_dir)
        if existing and not overwrite_output_dir:
            good = latest_complete_checkpoint(output_dir)
            resume = (f"Resume with resume_from_checkpoint=True (--resume_from_checkpoint true: {good.name}), use "
                      if good else "None of them is complete, so it cannot be resumed: use ")
            raise FileExistsError(
                f"{output_dir} already holds checkpoints ({', '.join(p.name for p in existing[-3:])}"
                f"{', ...' if len(existing) > 3 else ''}) and this run was not asked to resume: it would train from "
                f"scratch and rotate them away. {resume}another output_dir, or set overwrite_output_dir=True "
                "(--overwrite_output_dir true) to delete them and start over."
            )
        if existing and is_main_process:
            logger.warning("overwrite_output_dir: deleting the checkpoints of the previous run in %s: %s.",
                           output_dir, [p.name for p in existing])
            for folder in existing:
                shutil.rmtree(folder)
        return None
    if resume_from_checkpoint is True:
        newest = latest_complete_checkpoint(output_dir, verify_checksums=True)  # logs each newer one it skips
        if newest is not None:
            return str(verify_checkpoint(newest))
        found = [p.name for p in list_checkpoints(output_dir)]
        raise IncompleteCheckpointError(
            f"resume_from_checkpoint=True, but {output_dir} holds no intact checkpoint (found {found or 'none'}). "
            "Start without resume_from_checkpoint, or pass the path of a checkpoint folder."
        )
    return str(verify_checkpoint(resume_from_checkpoint))


# -- fingerprint --------------------------------------------------------------------------------------------------
def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of a module's state: the identity of a frozen teacher."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_fingerprint(folder: str | os.PathLike, fingerprint: dict[str, Any]) -> None:
    Path(folder, FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=1, sort_keys=True))


def check_fingerprint(folder: str | os.PathLike, current: dict[str, Any]) -> None:
    """Refuse to resume from ``folder`` when its run fingerprint differs from ``current``, naming each difference."""
    path = Path(folder, FINGERPRINT_FILE)
    if not path.is_file():
        raise ResumeMismatchError(
            f"{folder} has no {FINGERPRINT_FILE}, so it cannot be checked to come from this run (teacher, student, "
            "method). Resume from a checkpoint written by this version of hf_projkd, or start a new run."
        )
    saved = json.loads(path.read_text())
    differences = _differences(saved, current)
    if differences:
        shown = "; ".join(differences[:8]) + (f"; ... ({len(differences)} in all)" if len(differences) > 8 else "")
        raise ResumeMismatchError(
            f"Cannot resume from {folder}: it was written by a run with other settings: {shown} (checkpoint vs now). "
            "Resume with the same teacher, student architecture and method settings, or start a new run in "
            "another output_dir."
        )


def _differences(saved: Any, current: Any, where: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(saved) | set(current)):
            name = f"{where}.{key}" if where else key
            if key not in saved or key not in current:
                found.append(f"{name}: {saved.get(key, '(absent)')!r} vs {current.get(key, '(absent)')!r}")
            else:
                found += _differences(saved[key], current[key], name)
        return found
    return [] if saved == current else [f"{where}: {saved!r} vs {current!r}"]


# -- run lock -----------------------------------------------------------------------------------------------------
def check_output_dir(output_dir: str | os.PathLike) -> None:
    """``output_dir`` must be a folder or not exist yet (the Trainer would fail on a file with a bare errno)."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"output_dir {path} is a file: expected a folder (or a path that does not exist yet) for the checkpoints "
            "and the model. Pass another output_dir, or move that file away."
        )


class RunLock:
    """An exclusive lock on ``output_dir`` for the lifetime of one training run (see the module docstring)."""

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.path = Path(output_dir) / LOCK_FILE
        self._handle: Any = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            logger.warning("No fcntl on this platform: concurrent runs in one output_dir are not detected.")
            return self
        check_output_dir(self.path.parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open while the run lasts
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise OutputDirInUseError(
                f"{self.path.parent} is in use by another run ({holder}): two runs writing the same output_dir "
                "overwrite each other's checkpoints. Use another output_dir, or wait for that run to finish (a run "
                "that crashed releases the lock by itself)."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the flock
            self._handle = None
