"""Deleting the app's temporary files (uploads, renders, downloads) once they are old.

Gradio 6.31 has its own periodic deleter (``Blocks(delete_cache=...)``), but it walks its sets of
files while request handlers add to them; the first "Set changed size during iteration" ends its
task for good, silently. Under a stream of strokes (the editor uploads its layers with each) that
happened within minutes, and the temporary folder then grew by 0.43 MiB a stroke (issue 14, the soak
in the README). This sweeper reads the same sets (files Gradio made or received for these Blocks,
minus any a component keeps), works on a copy of each, and survives its own errors.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
# Gradio's own deleter then only runs at shutdown (it deletes everything then): never periodically.
NEVER_S = 10 ** 9


def _age_s(path: str | os.PathLike[str], now: float) -> float:
    """Seconds since ``path`` was created, by its ctime as Gradio counts (the link itself, not its target)."""
    return now - os.lstat(path).st_ctime


def kept_files(blocks: Any) -> set[str]:
    """Files a component asks to keep (examples, defaults): never deleted."""
    kept: set[str] = set()
    for component in getattr(blocks, "blocks", {}).values():
        kept.update(str(f) for f in getattr(component, "keep_in_cache", ()) or ())
    return kept


def sweep(blocks: Any, *, age_s: float, now: float | None = None) -> int:
    """Delete the files of ``blocks.temp_file_sets`` created (ctime, as Gradio counts) more than ``age_s``
    seconds before ``now``, except those kept; forget deleted and vanished ones. The number deleted."""
    now = time.time() if now is None else now
    kept, deleted = kept_files(blocks), 0
    for file_set in list(getattr(blocks, "temp_file_sets", ())):
        for name in list(file_set):  # a copy: handlers add to the set while this runs
            if str(name) in kept:
                continue
            try:
                if _age_s(name, now) <= age_s:
                    continue
                os.remove(name)
                deleted += 1
            except FileNotFoundError:
                pass
            except OSError as err:  # a folder, no permission: leave it, say so once per sweep is enough
                log.debug("temporary file %s not deleted: %s", name, err)
                continue
            file_set.discard(name)
    return deleted


def sweep_folder(folder: Path, *, age_s: float, now: float | None = None) -> int:
    """Delete the files below ``folder`` created more than ``age_s`` seconds before ``now``, then its
    emptied subfolders as old; the number of files deleted. For a folder only this app writes to: what a
    handler wrote there but Gradio never served (a result the page no longer waited for) is in none of
    Gradio's sets."""
    now = time.time() if now is None else now
    deleted = 0
    for path in sorted(Path(folder).rglob("*"), key=lambda p: len(p.parts), reverse=True):  # files, then folders
        try:
            if _age_s(path, now) <= age_s:
                continue
            if path.is_dir():
                path.rmdir()  # only if empty
            else:
                path.unlink()
                deleted += 1
        except OSError:  # gone meanwhile, or a folder not empty yet
            continue
    return deleted


def start_sweeper(blocks: Any, *, every_s: float, age_s: float, folders: tuple[Path, ...] = (),
                  stop: threading.Event | None = None) -> threading.Thread:
    """A daemon thread that runs ``sweep`` (and ``sweep_folder`` on each of ``folders``) every ``every_s``
    seconds; ``stop`` ends it."""
    stop = stop or threading.Event()

    def run() -> None:
        total = 0
        while not stop.wait(every_s):
            try:
                deleted = sweep(blocks, age_s=age_s)
                deleted += sum(sweep_folder(folder, age_s=age_s) for folder in folders)
                total += deleted
            except Exception:  # noqa: BLE001 - a sweep must never end the sweeper
                log.exception("sweeping temporary files failed; next try in %.0f s", every_s)
                continue
            if deleted:
                log.info("deleted %d temporary files older than %.0f s (%d so far)", deleted, age_s, total)

    thread = threading.Thread(target=run, name="temp-sweeper", daemon=True)
    thread.start()
    return thread
