"""With --auth, nothing of the studio answers without credentials: page, config, API, uploads, files."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

USER, PASSWORD = "ann", "correct horse"


@pytest.fixture(scope="module")
def guarded(app) -> Iterator[str]:
    """A second studio, with a login, on its own port; its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = app.build_demo()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                            auth=(USER, PASSWORD), max_file_size=app.MAX_UPLOAD)
    yield url
    demo.close()


def _logged_in(url: str):
    import httpx

    http = httpx.Client(base_url=url, timeout=60)
    assert http.post("login", data={"username": USER, "password": PASSWORD}).status_code == 200
    return http


def _served_file(http, url: str) -> str:
    """Run /sample through the plain HTTP API as a logged-in user; the URL of the first file it returns."""
    event = http.post("gradio_api/call/sample", json={"data": [1, 1, 0, "flow"]})  # grade, count, seed, generator
    event.raise_for_status()
    stream = http.get(f"gradio_api/call/sample/{event.json()['event_id']}").text
    data = [json.loads(line[len("data:"):]) for line in stream.splitlines() if line.startswith("data:")]
    first = data[-1][0][0]["image"]
    return first["url"]


def test_gradio_client_needs_the_credentials(guarded) -> None:
    from gradio_client import Client

    with pytest.raises(Exception, match="(?i)login|auth|credentials|401"):
        Client(guarded, verbose=False)
    client = Client(guarded, auth=(USER, PASSWORD), verbose=False)
    assert len(client.predict(1, 2, 0, api_name="/sample")) == 2
    with pytest.raises(Exception):
        Client(guarded, auth=(USER, "wrong"), verbose=False)


def test_plain_http_without_credentials_is_refused_everywhere(guarded) -> None:
    import httpx

    http = _logged_in(guarded)
    file_url = _served_file(http, guarded)
    assert http.get(file_url).status_code == 200  # the logged-in user gets the file ...
    anon = httpx.Client(base_url=guarded, timeout=60)
    assert anon.get(file_url).status_code in (401, 403)  # ... nobody else does
    page = anon.get("")
    assert "Paint a retinal label map" not in page.text and "Paint a retinal label map" in http.get("").text
    refused = {
        "config": anon.get("config"),
        "info": anon.get("gradio_api/info"),
        "openapi": anon.get("gradio_api/openapi.json"),
        "upload": anon.post("gradio_api/upload", files={"files": ("map.png", b"\x89PNG not really")}),
        "queue/join": anon.post("gradio_api/queue/join", json={"data": [1, 1, 0], "fn_index": 0, "session_hash": "x"}),
        "call": anon.post("gradio_api/call/sample", json={"data": [1, 1, 0]}),
        "queue/data": anon.get("gradio_api/queue/data", params={"session_hash": "x"}),
        "component_server": anon.post("gradio_api/component_server", json={}),
    }
    assert {name: r.status_code for name, r in refused.items()} == {name: 401 for name in refused}
    assert anon.post("login", data={"username": USER, "password": "wrong"}).status_code >= 400
