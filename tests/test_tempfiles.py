"""The temporary-file sweeper (issue 14: the temporary folder must stay bounded under a stream of strokes)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

from fundus_studio import tempfiles


def _blocks(tmp_path: Path, names: list[str], *, keep: set[str] = frozenset()):
    files = set()
    for name in names:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        files.add(str(path))
    component = SimpleNamespace(keep_in_cache={str(tmp_path / k) for k in keep})
    return SimpleNamespace(temp_file_sets=[files], blocks={1: component, 2: SimpleNamespace()}), files


def test_sweep_deletes_old_files_but_keeps_young_and_kept_ones(tmp_path) -> None:
    blocks, files = _blocks(tmp_path, ["a/composite.png", "b/layer_0.png", "c/example.png"], keep={"c/example.png"})
    assert tempfiles.sweep(blocks, age_s=60) == 0  # all just made
    assert tempfiles.sweep(blocks, age_s=60, now=time.time() + 61) == 2
    assert not (tmp_path / "a/composite.png").exists() and not (tmp_path / "b/layer_0.png").exists()
    assert (tmp_path / "c/example.png").exists()
    assert files == {str(tmp_path / "c/example.png")}  # deleted files are forgotten, kept ones stay known
    (tmp_path / "c/example.png").unlink()
    files.add(str(tmp_path / "gone.png"))  # vanished behind its back: forgotten, no error
    assert tempfiles.sweep(blocks, age_s=0, now=time.time() + 1) == 0 and files == {str(tmp_path / "c/example.png")}


def test_sweep_survives_files_added_while_it_runs(tmp_path, monkeypatch) -> None:
    """Gradio's deleter iterates the live set; a request adding a file meanwhile ends it for good."""
    blocks, files = _blocks(tmp_path, [f"{i}/layer_0.png" for i in range(50)])
    real_lstat, arrivals = tempfiles.os.lstat, iter(range(1000))

    def lstat_and_upload(name):
        files.add(str(tmp_path / f"new-{next(arrivals)}.png"))  # an upload arriving during the sweep
        return real_lstat(name)

    monkeypatch.setattr(tempfiles.os, "lstat", lstat_and_upload)
    assert tempfiles.sweep(blocks, age_s=0, now=time.time() + 1) == 50
    assert len(files) == 50 and all("new-" in f for f in files)  # the new arrivals are kept for later


def test_sweeper_thread_keeps_going_after_an_error(tmp_path) -> None:
    blocks, files = _blocks(tmp_path, ["x/composite.png"])
    calls = []

    class Flaky(list):
        def __iter__(self):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("boom")
            return super().__iter__()

    blocks.temp_file_sets = Flaky([files])
    stop = threading.Event()
    thread = tempfiles.start_sweeper(blocks, every_s=0.05, age_s=-1, stop=stop)
    deadline = time.time() + 5
    while (tmp_path / "x/composite.png").exists() and time.time() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=2)
    assert len(calls) >= 2 and not (tmp_path / "x/composite.png").exists()


def test_sweep_folder_deletes_old_files_and_emptied_folders(tmp_path) -> None:
    (tmp_path / "export-abc").mkdir()
    (tmp_path / "export-abc" / "set.zip").write_bytes(b"zip")
    (tmp_path / "view-1.png").write_bytes(b"png")
    assert tempfiles.sweep_folder(tmp_path, age_s=60) == 0  # all young
    assert tempfiles.sweep_folder(tmp_path, age_s=60, now=time.time() + 61) == 2
    assert list(tmp_path.iterdir()) == []  # the emptied export folder went too
    assert tempfiles.sweep_folder(tmp_path / "missing", age_s=0) == 0
