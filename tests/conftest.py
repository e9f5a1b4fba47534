"""Shared test set-up: seeded, offline, small."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads crawl on a busy 2-core machine
sys.path.insert(0, str(Path(__file__).parent))  # test helpers such as tiny_checkpoints


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoints folder of tiny untrained models (plumbing tests)."""
    from tiny_checkpoints import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))


APP_SIZE = 128  # the app's canvas in the tests (FUNDUS_STUDIO_SIZE): small renders, quick tests


@pytest.fixture(scope="session")
def app(tiny_checkpoints: Path):
    """The app module, on the tiny checkpoints, with a small canvas."""
    os.environ["FUNDUS_STUDIO_SIZE"] = str(APP_SIZE)
    import app as app_module

    app_module.STUDIO.reload(tiny_checkpoints)
    assert app_module.CANVAS_SIZE == APP_SIZE, "app was imported before the fixture set its size"
    return app_module


@pytest.fixture(scope="session")
def server(app) -> Iterator[str]:
    """The app served on a free local port for the session; its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = app.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                                max_file_size=app.MAX_UPLOAD)
    yield url
    app.demo.close()
