"""`orchestrate report`: the HTML renders its plots in a real headless browser without a
network, the PNGs are real pictures, and studies with nothing to show exit 2."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import optuna
import pytest
from helpers import run_orchestrate
from optuna.trial import TrialState
from PIL import Image

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    """The headless browser; missing, the test fails in CI (.ci/run installs it) and is
    skipped elsewhere."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found is not None:
            return found
    message = "no chromium on PATH; install it with `apt-get install -y chromium`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def rendered_dom(html_file: Path) -> str:
    """The page's DOM after its scripts ran, in headless Chromium with every network
    request sent to a proxy that does not exist: a page that needed a CDN draws nothing."""
    completed = subprocess.run(
        [
            chromium(),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--proxy-server=http://127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>",
            "--virtual-time-budget=15000",
            "--dump-dom",
            html_file.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout


def plot_ids(html_text: str) -> list[str]:
    return re.findall(r'<div id="(plot-[\w-]+)"', html_text)


def assert_plots_rendered(html_file: Path, expected: set[str]) -> None:
    source = html_file.read_text()
    dom = rendered_dom(html_file)
    ids = plot_ids(source)

    # Self-contained: no script or stylesheet is fetched from anywhere.
    assert "<script src" not in source and "<link" not in source
    # Every expected plot is there, and plotly drew each one as SVG in the browser.
    assert expected <= set(ids), ids
    for plot_id in ids:
        start = dom.index(f'id="{plot_id}"')
        end = dom.find("<section", start)
        assert 'class="main-svg"' in dom[start : end if end != -1 else None], plot_id


def assert_real_picture(png: Path) -> None:
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        # A plot, not a blank or uniform canvas: a real size and many colours.
        assert rgb.width >= 300 and rgb.height >= 200, (png, rgb.size)
        assert len(colours) > 20, (png, len(colours))


@pytest.mark.real
@pytest.mark.timeout(600)
def test_real_report_renders_every_plot_offline(
    real_study: tuple[Path, str, str], tmp_path: Path
) -> None:
    cwd, storage, name = real_study
    study = optuna.load_study(study_name=name, storage=storage)
    states = [t.state for t in study.trials]
    # The fixture's study has what the plots need: completed and pruned trials.
    assert states.count(TrialState.COMPLETE) >= 2 and TrialState.PRUNED in states, states

    out = tmp_path / "report"
    completed = run_orchestrate(
        ["report", "--study", name, "--storage", storage, "--out", str(out)], cwd=cwd
    )
    printed = completed.stdout.split()
    html_file = out / "report.html"

    # The HTML file and a PNG per plot, with their paths on stdout.
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert printed[0] == str(html_file)
    pngs = {Path(p).name for p in printed[1:]}
    assert pngs == {"history.png", "importances.png", "parallel.png", "slice.png",
                    "intermediate.png"}  # fmt: skip
    for png in printed[1:]:
        assert_real_picture(Path(png))
    # The summary names the best trial and how many trials ended in each state.
    text = html_file.read_text()
    assert f"Best trial: {study.best_trial.number}" in text
    assert "<td>pruned</td>" in text and "<td>complete</td>" in text
    # The learning curves include the pruned trials' single epochs; every plot is drawn.
    assert_plots_rendered(
        html_file,
        {"plot-history", "plot-importances", "plot-parallel", "plot-slice", "plot-intermediate"},
    )


@pytest.mark.real
def test_real_trials_json_has_each_epoch(real_study: tuple[Path, str, str]) -> None:
    cwd, storage, name = real_study
    completed = run_orchestrate(
        ["trials", "--study", name, "--storage", storage, "--format", "json"], cwd=cwd
    )
    trials = json.loads(completed.stdout)["trials"]

    # Completed trials have both epochs' val_loss; pruned ones stop after the first.
    assert completed.returncode == 0, completed.stderr[-3000:]
    for trial in trials:
        epochs = list(trial["intermediate_values"])
        assert epochs == (["1", "2"] if trial["state"] == "COMPLETE" else ["1"]), trial
        assert trial["user_attrs"]["command"].split()[1] == "train"


@pytest.mark.timeout(300)
def test_two_objectives_get_a_pareto_front(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'mo.db'}"
    study = optuna.create_study(
        study_name="mo",
        storage=storage,
        directions=["minimize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["val_loss", "seconds"])
    study.optimize(
        lambda t: (
            t.suggest_float("lr", 1e-4, 1e-1, log=True),
            t.suggest_int("batch_size", 8, 64),
        ),
        n_trials=8,
    )

    out = tmp_path / "out"
    completed = run_orchestrate(["report", "--storage", storage, "--out", str(out)], cwd=tmp_path)
    html_file = out / "report.html"

    # One plot per objective, named after it, and the front of both; its PNG is a picture.
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert_real_picture(out / "pareto.png")
    text = html_file.read_text()
    assert "Pareto front: " in text and "val_loss (minimize), seconds (minimize)" in text
    # No trial reported epochs, so the curves are left out with a note, on stderr too.
    assert "no trial reported a value per epoch" in text
    assert "left out: Learning curves" in completed.stderr
    assert_plots_rendered(
        html_file,
        {"plot-pareto", "plot-history-val-loss", "plot-history-seconds", "plot-slice-seconds"},
    )


def test_one_completed_trial_leaves_out_the_importances(tmp_path: Path) -> None:
    from orchestrator.html_report import write_report

    study = optuna.create_study(study_name="one")
    study.optimize(lambda t: t.suggest_float("lr", 0.001, 0.1), n_trials=1)

    report = write_report(study, tmp_path)
    text = report.html.read_text()

    # The report is written; the importances section says why it has no plot.
    assert "needs at least 2 completed trials; the study has 1" in text
    assert 'id="plot-importances"' not in text and 'id="plot-history"' in text
    assert not (tmp_path / "importances.png").exists()


def test_no_completed_trial_or_unknown_study_exits_2(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="failing", storage=storage)
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))

    empty = run_orchestrate(["report", "--study", "failing", "--storage", storage], cwd=tmp_path)
    unknown = run_orchestrate(["report", "--study", "nope", "--storage", storage], cwd=tmp_path)

    # Both are the user's to fix: exit 2, naming the study and what to do.
    assert empty.returncode == 2
    assert "'failing' has no completed trial to report (1 FAIL)" in empty.stderr
    assert "orchestrate tune" in empty.stderr
    assert unknown.returncode == 2 and "no study 'nope'" in unknown.stderr
    assert "failing" in unknown.stderr
    # Nothing was written.
    assert not (tmp_path / "reports").exists()
