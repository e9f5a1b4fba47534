"""The command line's frame: help, argument errors and one-line errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fundus_studio import cli


def test_help_lists_the_commands(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("phantom", "prepare", "extract"):
        assert command in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["phantom", "--out", "x", "--count", "3", "--grade", "7"], "grade must be 0..4"),
        (["phantom", "--out", "x", "--count", "0"], "positive integer"),
        (["phantom", "--out", "x", "--count", "3", "--size", "100"], "multiple of 16"),
        (["prepare", "messidor", "src", "--out", "x"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_console_script_reports_errors_in_one_line(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "fundus-studio"
    assert script.exists(), "the package's console script is not installed"
    proc = subprocess.run(
        [str(script), "extract", str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "out.png")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.jpg: no such file" in lines[0]
    assert not (tmp_path / "out.png").exists()


def test_sample_shards_merge_and_render_through_the_cli(tmp_path: Path, tiny_checkpoints: Path, capsys) -> None:
    import numpy as np

    from fundus_studio.dataset import StudioDataset
    from fundus_studio.imageio import read_image

    common = ["--count", "4", "--seed", "3", "--size", "64", "--checkpoints", str(tiny_checkpoints)]
    assert cli.main(["sample", "--out", str(tmp_path / "s0"), "--shard", "0/2", *common]) == 0
    assert cli.main(["sample", "--out", str(tmp_path / "s1"), "--shard", "1/2", *common]) == 0
    assert cli.main(["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "all")]) == 0
    merged = StudioDataset.open(tmp_path / "all")
    assert sorted(s.id for s in merged) == [f"sample-{i:06d}" for i in range(4)]
    assert [s.grade for s in sorted(merged, key=lambda s: s.id)] == [0, 1, 2, 3]
    label = tmp_path / "all" / merged.samples[0].label
    out = tmp_path / "render.png"
    assert cli.main(["render", str(label), "--out", str(out), "--checkpoints", str(tiny_checkpoints)]) == 0
    assert read_image(out).shape == (64, 64, 3)
    assert np.array_equal(read_image(out), read_image(out))


def test_sample_with_a_bad_shard_or_missing_checkpoints(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["sample", "--out", str(tmp_path / "x"), "--count", "2", "--shard", "3/2"])
    assert exc.value.code == 2
    code = cli.main(["sample", "--out", str(tmp_path / "x"), "--count", "2", "--checkpoints", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and "missing" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
