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
