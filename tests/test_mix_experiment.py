"""The real + synthetic mixing experiment on a tiny configuration: runs, resume, results.md/json/png."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fundus_studio.phantom import write_phantoms
from training import mix_experiment, unet

SIZE = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mix-data")
    return {name: write_phantoms(root / name, count=count, grade=None, size=SIZE, seed=seed, progress=False)
            for name, count, seed in (("real", 4, 1), ("synthetic", 4, 2), ("test", 3, 3))}


def args(data: dict[str, Path], out: Path, *, fractions: str = "0,0.5", seeds: int = 2) -> list[str]:
    # 4 real pairs, one held out per run to choose its thresholds: 3 train.
    return ["--real", str(data["real"]), "--synthetic", str(data["synthetic"]), "--test", str(data["test"]),
            "--out", str(out), "--classes", "hard_exudate", f"--fractions={fractions}", "--seeds", str(seeds),
            "--preset", "smoke", "--steps", "2", "--threads", "1", "--val-fraction", "0.25"]


@pytest.mark.slow  # about 20 s: four smoke trainings and evaluations, two processes at a time
def test_runner_trains_scores_and_tabulates_every_fraction_and_seed(tmp_path: Path, data: dict[str, Path]) -> None:
    out = tmp_path / "mix"
    assert mix_experiment.main([*args(data, out), "--jobs", "2"]) == 0
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["f0-s0", "f0-s1", "f0.5-s0", "f0.5-s1"]

    md = (out / "results.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "%" in line.split("|")[1]]
    assert [r.split("|")[1].strip() for r in rows] == ["0 %", "50 %"]
    assert [r.split("|")[2].strip() for r in rows] == ["3 + 0", "3 + 3"]  # 50 %: as many synthetic as real
    assert "F1 (pooled)" in md and "F1 (per image)" in md and "±" in md and "| threshold |" in md

    res = json.loads((out / "results.json").read_text())
    assert [(r["fraction"], r["seed"]) for r in res["runs"]] == [(0.0, 0), (0.0, 1), (0.5, 0), (0.5, 1)]
    for r in res["runs"]:  # scored at the thresholds its own validation split chose
        assert r["thresholds"] == r["train_data"]["thresholds"] and r["train_data"]["n_val"] == 1
    assert res["summary"]["hard_exudate"]["0.5"]["threshold"]["n"] == 2
    assert set(res["summary"]["hard_exudate"]) == {"0", "0.5"}
    f1 = res["summary"]["hard_exudate"]["0.5"]["per_image"]["f1"]
    assert len(f1["values"]) == 2 and f1["n"] == sum(v is not None for v in f1["values"])
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Re-running resumes: finished runs are not retrained and their cached scores are reused.
    cached = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/eval.json")}
    assert mix_experiment.main(args(data, out)) == 0
    assert {p: p.stat().st_mtime_ns for p in cached} == cached
    assert "nothing to train" in (out / "runs" / "f0-s0" / "log.txt").read_text()


def test_runner_refuses_a_pool_too_small(tmp_path: Path, data: dict[str, Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mix"
    # 75 % of the training set synthetic with 3 real needs 9 synthetic: the pool holds 4.
    assert mix_experiment.main(args(data, out, fractions="0.75", seeds=1)) == 2
    assert "needs 9 synthetic samples, but the pool holds 4" in capsys.readouterr().err
    assert not (out / "results.md").exists()


@pytest.mark.parametrize("fractions", ["1", "-0.1", "a,b"])
def test_runner_refuses_bad_fractions(tmp_path: Path, data: dict[str, Path], fractions: str) -> None:
    with pytest.raises(SystemExit):
        mix_experiment.parse_args(args(data, tmp_path / "x", fractions=fractions))


def test_trainer_args_pass_every_pool_the_counting_and_the_validation_split(tmp_path: Path,
                                                                            data: dict[str, Path]) -> None:
    cfg = mix_experiment.parse_args([*args(data, tmp_path / "x"), "--synthetic", str(data["test"]),
                                     "--share-counting", "paper", "--paper-real", "40"])
    assert cfg.synthetic == (data["synthetic"], data["test"]) and cfg.seeds == 2
    run = unet.parse_args(mix_experiment.trainer_args(cfg, 0.25, 1))
    assert run.synthetic == (data["synthetic"], data["test"]) and run.seed == 1
    assert (run.share_counting, run.paper_real, run.val_fraction, run.val_split) == ("paper", 40, 0.25, "grade")
    assert not run.tensorboard  # dozens of short runs: metrics.csv only
    assert mix_experiment.ExperimentConfig(real=(data["real"],), synthetic=(data["synthetic"],), test=data["test"],
                                           out=tmp_path).seeds == 5  # the default: five seeds per share
