"""Checkpoints that survive a kill: a completion manifest written last, checked before any resume.

The Trainer writes ``checkpoint-<step>`` file by file. A run killed in the middle leaves a folder that looks like
a checkpoint but holds truncated or missing files, and ``resume_from_checkpoint=True`` would pick it because it
is the newest. So every checkpoint gets ``CHECKPOINT_MANIFEST`` (file names and sizes) as its very last file,
written atomically (temporary file, fsync, rename) after the other files are flushed to disk. A folder without
it, or whose files no longer have the recorded sizes, is incomplete: resuming from it is refused with a message
naming the newest complete checkpoint, and ``resume_from_checkpoint=True`` skips it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

CHECKPOINT_MANIFEST = "checkpoint_complete.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")

logger = logging.getLogger(__name__)


class IncompleteCheckpointError(OSError):
    """A checkpoint folder that was not completely written (killed mid-save) or was damaged afterwards."""


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _files_of(folder: Path) -> dict[str, int]:
    return {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != CHECKPOINT_MANIFEST and not path.name.endswith(".tmp")
    }


def mark_checkpoint_complete(folder: str | os.PathLike, step: int | None = None) -> Path:
    """Flush every file of ``folder`` to disk, then atomically write the manifest that marks it complete.

    Also the way to accept, by hand, a checkpoint you know is complete (one written before manifests existed).
    """
    folder = Path(folder)
    files = _files_of(folder)
    for name in files:
        _fsync(folder / name)
    manifest = folder / CHECKPOINT_MANIFEST
    temporary = manifest.with_name(manifest.name + ".tmp")
    temporary.write_text(json.dumps({"step": step, "files": files}, indent=1))
    _fsync(temporary)
    os.replace(temporary, manifest)
    return manifest


def unmark_checkpoint(folder: str | os.PathLike) -> None:
    """Remove the manifest before (re)writing into ``folder``, so a half-overwritten folder never looks complete."""
    Path(folder, CHECKPOINT_MANIFEST).unlink(missing_ok=True)


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or None when its manifest and files agree."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} does not exist or is not a folder"
    manifest = folder / CHECKPOINT_MANIFEST
    if not manifest.is_file():
        return (f"{folder} has no {CHECKPOINT_MANIFEST}: it was being written when the run stopped (or was written "
                "by a version of hf_projkd without checkpoint manifests)")
    try:
        recorded: dict[str, int] = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as error:
        return f"{manifest} is unreadable ({error})"
    for name, size in recorded.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing (the manifest lists it with {size} bytes)"
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, the manifest recorded {size}: it is truncated or altered"
    return None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-<step>`` folders of ``output_dir``, oldest step first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT_NAME.match(p.name))]
    return [path for _, path in sorted(found)]


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint folder that passes ``checkpoint_problem``; newer incomplete ones are logged and skipped."""
    for folder in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        logger.warning("Skipping the incomplete checkpoint %s: %s.", folder.name, problem)
    return None


def verify_checkpoint(folder: str | os.PathLike) -> Path:
    """``folder`` if it is a complete checkpoint, else ``IncompleteCheckpointError`` saying which one to use instead."""
    folder = Path(folder)
    problem = checkpoint_problem(folder)
    if problem is None:
        return folder
    good = latest_complete_checkpoint(folder.parent)
    hint = (f"Resume from {good} (the newest complete checkpoint), or pass resume_from_checkpoint=True to pick it."
            if good is not None else "There is no complete checkpoint beside it: start the run again.")
    raise IncompleteCheckpointError(
        f"Cannot resume from {folder}: {problem}. {hint} If you know this checkpoint is complete, accept it with "
        "hf_projkd.checkpointing.mark_checkpoint_complete(folder)."
    )


def resolve_resume_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str | os.PathLike) -> str | None:
    """The checkpoint folder to resume from: ``True`` means the newest complete one in ``output_dir``."""
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is True:
        good = latest_complete_checkpoint(output_dir)
        if good is None:
            found = [p.name for p in list_checkpoints(output_dir)]
            raise IncompleteCheckpointError(
                f"resume_from_checkpoint=True, but {output_dir} holds no complete checkpoint (found {found or 'none'}"
                "). Start without resume_from_checkpoint, or pass the path of a checkpoint folder."
            )
        return str(good)
    return str(verify_checkpoint(resume_from_checkpoint))
