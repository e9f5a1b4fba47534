"""A short soak of the studio (benchmarks/soak.py): concurrent clients, bad inputs, no errors or drops."""

from __future__ import annotations

import json

import pytest

from conftest import APP_SIZE

pytestmark = pytest.mark.slow


def test_short_soak_has_no_errors_and_refuses_bad_input_cleanly(tiny_checkpoints, tmp_path) -> None:
    from benchmarks.soak import soak

    out = tmp_path / "soak"
    s = soak(clients=3, minutes=0.4, strokes=0, size=APP_SIZE, checkpoints=tiny_checkpoints, out=out, cache_age=10,
             sample_every=1.0, seed=1)
    assert s["error"] == 0 and s["dropped"] == 0, s["first_errors"]
    assert s["ok"] > 10 and s["refused"] > 0  # bad inputs refused with their reason, naming the file
    assert {"render", "sample", "extract"} <= set(s["per_endpoint"])
    assert all(e["p95_s"] is None or e["p95_s"] >= e["p50_s"] > 0 for e in s["per_endpoint"].values())
    assert s["rss_peak_mib"] >= s["rss_idle_mib"] > 0 and s["fds_max"] > 0
    saved = json.loads((out / "soak.json").read_text())
    assert saved["summary"]["requests"] == s["requests"] == len(saved["requests"])
    assert len(saved["timeline"]) >= 10 and (out / "soak.png").stat().st_size > 10_000
