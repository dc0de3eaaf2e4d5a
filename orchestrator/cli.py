"""The `orchestrate` command: parses, wires and prints.

This is the one place that turns domain errors into exit codes (`_EXIT_CODES`) and
configures logging (`-v` for each trial's details, `-vv` for debugging).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import optuna
from rich.console import Console
from rich.markup import escape

from orchestrator import __version__, datasets
from orchestrator.build import build_trainer
from orchestrator.dashboard import DEFAULT_HOST, DEFAULT_PORT, open_dashboard
from orchestrator.enqueue import load_points
from orchestrator.errors import (
    ArgumentsError,
    BuildFailed,
    DashboardError,
    DataError,
    DataNotFound,
    Interrupted,
    NoCompletedTrial,
    NotACheckout,
    NothingToReport,
    OrchestratorError,
    ReplayDiffers,
    ReplayFailed,
    RunsFailed,
    SpaceError,
    StorageError,
    StudyMismatch,
    StudyNotFound,
    TrainerNotFound,
    TrialNotUsable,
)
from orchestrator.export import FORMATS, trials_csv, trials_json
from orchestrator.final import (
    FinalConfig,
    configuration_lines,
    run_final,
    run_line,
    runs_dir_of,
    write_results,
)
from orchestrator.html_report import HTML_NAME, default_out_dir, write_report
from orchestrator.objectives import DIRECTIONS, parse_objectives, resolve_sampler_and_pruner
from orchestrator.parallel import available_cores, threads_per_trial
from orchestrator.progress import shown_on as progress_bar
from orchestrator.registry import PRUNERS, SAMPLERS, describe, parse_args_json
from orchestrator.replay import DEFAULT_TOLERANCE, replay
from orchestrator.reports import (
    best_lines,
    best_trial,
    event_line,
    is_multi_objective,
    pareto_front,
    pareto_lines,
    trial_line,
    trials_table,
)
from orchestrator.runner import FLAGS_FROM_STDIN, TrainerProcess
from orchestrator.space import builtin_names, builtin_space, builtin_text, load_space
from orchestrator.storage import (
    DEFAULT_STORAGE,
    STORAGE_ENV,
    load_study,
    open_storage,
    study_names,
)
from orchestrator.study import TrainerFlags, TuneConfig
from orchestrator.study import tune as tune_study
from orchestrator.trainer import TRAINER_ENV, find_trainer

logger = logging.getLogger(__name__)

# Usage problems exit 2, like Click's own; failures of the work itself exit 1.
_EXIT_CODES: dict[type[OrchestratorError], int] = {
    TrainerNotFound: 2,
    NotACheckout: 2,
    StorageError: 2,
    StudyNotFound: 2,
    StudyMismatch: 2,
    SpaceError: 2,
    DataNotFound: 2,
    NothingToReport: 2,
    DashboardError: 2,
    TrialNotUsable: 2,
    ReplayFailed: 3,
    ArgumentsError: 2,
    BuildFailed: 1,
    NoCompletedTrial: 1,
    DataError: 1,
}
_INTERRUPTED = 130

stdout = Console(soft_wrap=True, highlight=False)
stderr = Console(stderr=True, soft_wrap=True, highlight=False)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Interrupted as error:
            click.echo(f"orchestrate: {error}", err=True)
            ctx.exit(error.exit_code)
        except OrchestratorError as error:
            click.echo(f"orchestrate: {error}", err=True)
            ctx.exit(_exit_code(error))
        except KeyboardInterrupt:
            click.echo("orchestrate: interrupted; run the same command again to resume", err=True)
            ctx.exit(_INTERRUPTED)


trainer_option = click.option(
    "--trainer",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"The rust-trainer binary. Default: ${TRAINER_ENV}, then the installed one, "
    "then this checkout's target/release.",
)
study_option = click.option(
    "--study",
    "study_name",
    metavar="NAME",
    help="The study's name. Default: the only study in the storage.",
)
storage_option = click.option(
    "--storage",
    default=DEFAULT_STORAGE,
    envvar=STORAGE_ENV,
    show_default=True,
    show_envvar=True,
    help="Optuna storage: an SQLite file (sqlite:///FILE), a database server "
    "(postgresql://USER@HOST/DB, any SQLAlchemy URL), or a journal file "
    "(journal:///FILE; four slashes for an absolute path).",
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output: -v per trial, -vv debug.")
@click.version_option(__version__, prog_name="orchestrate")
def cli(verbose: int) -> None:
    """Tune the Rust trainer with Optuna: one trainer process per trial."""
    _configure_logging(verbose)


@cli.command()
@click.option("--debug", is_flag=True, help="Build the debug profile (target/debug) instead.")
def build(debug: bool) -> None:
    """Build the trainer from this checkout with cargo and print the binary's path.

    libtorch comes from this Python's torch package (LIBTORCH_USE_PYTORCH=1). cargo's
    output goes to stderr; only the path goes to stdout.
    """
    click.echo(build_trainer("debug" if debug else "release"))


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@trainer_option
@click.argument("trainer_args", nargs=-1, type=click.UNPROCESSED)
def train(trainer: Path | None, trainer_args: tuple[str, ...]) -> NoReturn:
    """Run the trainer once with TRAINER_ARGS passed through unchanged, showing its events.

    \b
    Example:
      orchestrate train --model cnn --dataset mnist --epochs 3 --data-dir ../shared/datasets

    The exit code is the trainer's. `rust-trainer train --help` lists the trainer's flags.
    --trainer, when given, comes before the trainer's flags.
    """
    if any(arg.split("=", 1)[0] == FLAGS_FROM_STDIN for arg in trainer_args):
        raise click.UsageError(
            f"{FLAGS_FROM_STDIN}: the trainer run here reads nothing on stdin; give its "
            f"flags on this command line, or run `rust-trainer train {FLAGS_FROM_STDIN}`"
        )
    # The events are shown here on stdout; the trainer's own progress lines would repeat them.
    command = [str(find_trainer(trainer)), "train", "--quiet", *trainer_args]
    with TrainerProcess(command) as process:
        try:
            _show_events(process)
        except KeyboardInterrupt:
            # The trainer has a session of its own, so the terminal's Ctrl-C did not reach
            # it: pass it on, and show the result it prints when stopping.
            process.send_signal(signal.SIGINT)
            _show_events(process)
        outcome = process.wait()

    if outcome.malformed is not None:
        stderr.print(f"[bold red]bad output[/]: {outcome.malformed}")
    code = outcome.exit_code if outcome.exit_code is not None else 128 + (outcome.signal or 0)
    sys.exit(code)


@cli.command()
@click.option(
    "--trials",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="Total finished trials the study should have; a rerun runs the missing ones.",
)
@click.option(
    "--sampler",
    type=click.Choice(list(SAMPLERS)),
    help="Default: tpe, or nsga2 with several --objectives. " + describe(SAMPLERS) + ".",
)
@click.option(
    "--pruner",
    type=click.Choice(list(PRUNERS)),
    help="Default: median, or none with several --objectives (which cannot be pruned). "
    + describe(PRUNERS)
    + ".",
)
@click.option(
    "--sampler-args",
    metavar="JSON",
    help="""Keyword arguments for the sampler's Optuna class, e.g. '{"n_startup_trials": 20}'.""",
)
@click.option(
    "--pruner-args",
    metavar="JSON",
    help="""Keyword arguments for the pruner's Optuna class, e.g. '{"upper": 1.0}'.""",
)
@click.option(
    "--objectives",
    metavar="NAMES",
    help="What the study optimises, comma-separated: "
    + ", ".join(f"{name} ({way})" for name, way in DIRECTIONS.items())
    + ". Default: val_loss. Several give a Pareto front (see `best`).",
)
@click.option(
    "--enqueue",
    "enqueue_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Configurations to try first: .json (a list of objects), .jsonl or .toml "
    "([[trial]] tables); each is queued once per study.",
)
@click.option(
    "--pruner-startup-trials",
    default=5,
    show_default=True,
    type=click.IntRange(min=0),
    help="Trials that run unpruned before median/percentile pruning starts.",
)
@click.option(
    "--pruner-warmup-epochs",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Epochs a trial runs before median/percentile pruning may stop it.",
)
@click.option(
    "--study", "study_name", metavar="NAME", help="The study's name. Default: MODEL-DATASET."
)
@storage_option
@click.option(
    "--seed",
    type=int,
    help="Seeds the sampler, and is every trial's --seed. Default: the study's "
    "stored seed, or a random one for a new study.",
)
@click.option(
    "--space",
    "space_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Search space TOML file. Default: the built-in space for --model.",
)
@click.option("--model", default="cnn", show_default=True, help="Trainer --model.")
@click.option("--dataset", default="mnist", show_default=True, help="Trainer --dataset.")
@click.option(
    "--epochs",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Trainer --epochs: the most epochs a trial trains.",
)
@click.option(
    "--train-limit",
    type=click.IntRange(min=1),
    help="Trainer --train-limit: train on the first N examples (fidelity).",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Trainer --val-fraction: the share of the training set held out.",
)
@click.option("--device", default="auto", show_default=True, help="Trainer --device.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="RUST_TRAINER_DATA_DIR",
    show_envvar=True,
    help="Trainer --data-dir, recorded as an absolute path.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Trainer --threads for each trial. Default: the cores divided by --n-jobs.",
)
@click.option(
    "--n-jobs",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Trials at a time in this process, one trainer process each. With several GPUs "
    "each trial gets one of its own (CUDA_VISIBLE_DEVICES).",
)
@click.option(
    "--trials-per-gpu",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="How many of this process's trials may share one GPU.",
)
@click.option(
    "--prestart/--no-prestart",
    default=None,
    help="Start each trial's trainer process while the last trial is recorded and the next "
    "sampled, so that loading libtorch overlaps that work; it is handed its flags on stdin. "
    "Default: on when the trainer is a binary, off for a script (a wrapper may read its "
    "command line); never with a GPU per trial.",
)
@click.option(
    "--runs-dir",
    default=Path("runs"),
    show_default=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Each trial's command, events and stderr go to RUNS_DIR/STUDY/trial-NNNN.",
)
@click.option(
    "--trial-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="End a trial's process after this long and record it as FAIL.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Start no trial after this long (running trials finish; see --trial-timeout).",
)
@click.option(
    "--heartbeat",
    default=30,
    show_default=True,
    type=click.IntRange(min=1),
    metavar="SECONDS",
    help="A running trial's heartbeat (database storages). A trial silent for four beats "
    "lost its worker: it is recorded as FAIL and its parameters are queued again.",
)
@click.option(
    "--sampler-startup-trials",
    default=10,
    show_default=True,
    type=click.IntRange(min=0),
    help="Trials drawn at random before tpe or gp starts modelling.",
)
@trainer_option
@click.argument("trainer_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- TRAINER_FLAGS]")
def tune(
    trials: int,
    sampler: str | None,
    pruner: str | None,
    sampler_args: str | None,
    pruner_args: str | None,
    objectives: str | None,
    enqueue_file: Path | None,
    pruner_startup_trials: int,
    pruner_warmup_epochs: int,
    study_name: str | None,
    storage: str,
    seed: int | None,
    space_file: Path | None,
    model: str,
    dataset: str,
    epochs: int,
    train_limit: int | None,
    val_fraction: float | None,
    device: str,
    data_dir: Path | None,
    threads: int | None,
    n_jobs: int,
    trials_per_gpu: int,
    prestart: bool | None,
    runs_dir: Path,
    trial_timeout: float | None,
    timeout: float | None,
    heartbeat: int,
    sampler_startup_trials: int,
    trainer: Path | None,
    trainer_args: tuple[str, ...],
) -> None:
    """Run an Optuna study, one trainer process per trial, until it has --trials trials.

    Running the same command again resumes the study: trials already finished (complete,
    pruned or failed) count toward --trials. Each trial's val_loss (the best epoch's) is
    minimised, or what --objectives names; a failed trainer run is recorded as FAIL with its
    reason and the study goes on.

    Trainer flags after `--` go to every trial unchanged, after the study's own flags and
    before the sampled ones, e.g. `-- --width 0.25 --augment none`.

    Ctrl-C, SIGTERM or SIGHUP ends the running trials (recorded as FAIL, reason
    interrupted, and queued again) and exits 130, 143 or 129; a second signal kills them at
    once. Several `tune` processes, on one
    machine or many, may share a study through the storage: run the same command in each.
    """
    cores = available_cores()
    if threads is None:
        threads = threads_per_trial(n_jobs, cores)
    if n_jobs * threads > cores:
        logger.warning(
            "--n-jobs %d trials with --threads %d each need %d cores, but this machine has %d",
            n_jobs,
            threads,
            n_jobs * threads,
            cores,
        )
    chosen = parse_objectives(objectives)
    sampler, pruner = resolve_sampler_and_pruner(chosen, sampler, pruner)
    search_space = load_space(space_file) if space_file else builtin_space(model)
    config = TuneConfig(
        trainer=find_trainer(trainer),
        study_name=study_name or f"{model}-{dataset}",
        storage=storage,
        trials=trials,
        space=search_space,
        flags=TrainerFlags(
            model=model,
            dataset=dataset,
            epochs=epochs,
            train_limit=train_limit,
            val_fraction=val_fraction,
            device=device,
            data_dir=data_dir,
            threads=threads,
            extra=trainer_args,
        ),
        sampler=sampler,
        pruner=pruner,
        seed=seed,
        runs_dir=runs_dir,
        trial_timeout=trial_timeout,
        pruner_startup_trials=pruner_startup_trials,
        pruner_warmup_epochs=pruner_warmup_epochs,
        sampler_startup_trials=sampler_startup_trials,
        timeout=timeout,
        n_jobs=n_jobs,
        trials_per_gpu=trials_per_gpu,
        prestart=prestart,
        heartbeat=heartbeat,
        sampler_args=parse_args_json(sampler_args, "--sampler-args"),
        pruner_args=parse_args_json(pruner_args, "--pruner-args"),
        enqueue=load_points(enqueue_file, search_space) if enqueue_file else (),
        objectives=chosen,
    )
    # On a terminal a progress bar stays below the trials' lines, printed above it.
    with progress_bar(stderr) as progress:
        summary = tune_study(
            config,
            on_trial=lambda trial: stderr.print(trial_line(trial), markup=False),
            watcher=progress,
        )

    counts = ", ".join(f"{n} {state}" for state, n in summary.states.items())
    click.echo(f"study {summary.study_name} in {summary.storage} (seed {summary.seed})")
    if summary.stop_reason is not None and summary.ran == 0:
        click.echo(f"nothing to run: {summary.stop_reason} ({counts})")
    else:
        stopped = f"; stopped: {summary.stop_reason}" if summary.stop_reason else ""
        click.echo(f"ran {summary.ran} trials{stopped}; the study has {counts}")
    if summary.best is not None:
        click.echo(f"best {trial_line(summary.best)}")
    elif len(chosen) > 1 and summary.states.get("COMPLETE"):
        click.echo("`orchestrate best` shows the Pareto front")
    elif (summary.ran or set(summary.states) == {"FAIL"}) and not (
        summary.states.get("COMPLETE") or summary.states.get("PRUNED")
    ):
        # A script must be able to tell a study whose every trial failed from one that ran
        # (pruning every trial is the pruner's verdict, not a failure), on a rerun too.
        raise NoCompletedTrial(
            f"no trial of study {summary.study_name!r} completed ({counts}); "
            "`orchestrate trials` shows each trial's fail_reason"
        )


@cli.command()
@study_option
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead.")
def best(study_name: str | None, storage: str, as_json: bool) -> None:
    """Show the best trial: its val_loss, params, attributes and the trainer command.

    The command is the last line of the output, ready to paste into a shell. A study with
    several --objectives shows its Pareto front instead, with each trial's command.
    """
    study = load_study(_study_name(study_name, storage), storage)
    if is_multi_objective(study):
        front = pareto_front(study)
        click.echo(
            json.dumps(front.to_json(), indent=2) if as_json else "\n".join(pareto_lines(front))
        )
        return
    result = best_trial(study)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    for line in best_lines(result):
        click.echo(line)


@cli.command()
@study_option
@storage_option
@click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table: for reading; csv or json: every trial with its values, params, "
    "intermediate values, duration and user attrs, for other programs (json for jq).",
)
def trials(study_name: str | None, storage: str, output_format: str) -> None:
    """Show the study's trials: state, val_loss, val_accuracy, params, duration."""
    study = load_study(_study_name(study_name, storage), storage)
    if output_format != "table":
        click.echo(trials_csv(study) if output_format == "csv" else trials_json(study), nl=False)
        return
    table = trials_table(study)
    # Piped into a file or another program, a table needs no wrapping to a terminal's width.
    console = stdout if stdout.is_terminal else Console(width=1000, highlight=False)
    console.print(table)


@cli.command()
@study_option
@storage_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help=f"Folder for {HTML_NAME} and the PNGs. Default: reports/STUDY.",
)
def report(study_name: str | None, storage: str, out_dir: Path | None) -> None:
    """Write a study's report: one self-contained HTML file and a PNG per plot.

    The HTML file holds a summary (best trial or Pareto front, trials per state) and
    interactive plots (optimisation history, parameter importances, parallel coordinates,
    slices, learning curves, and the Pareto front with several objectives); it embeds
    plotly.js, so it opens from disk without a network. Prints the paths it wrote.
    """
    name = _study_name(study_name, storage)
    study = load_study(name, storage)
    written = write_report(study, out_dir or default_out_dir(name))

    click.echo(written.html)
    for png in written.pngs:
        click.echo(png)
    for note in written.skipped:
        stderr.print(f"left out: {note}", markup=False)


@cli.command()
@click.option(
    "--study",
    "study_name",
    metavar="NAME",
    help="The study to open at. Default: the storage's only study, else the list.",
)
@storage_option
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to listen on; the dashboard has no login, so keep it local unless "
    "the network is trusted.",
)
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535))
def dashboard(study_name: str | None, storage: str, host: str, port: int) -> None:
    """Serve optuna-dashboard on the study's storage until Ctrl-C.

    The dashboard shows every study in the storage, live, while `tune` runs: history,
    importances, learning curves, each trial's parameters and attributes.
    """
    opened = open_storage(storage, create=False)
    names = study_names(opened)
    if study_name is not None and study_name not in names:
        raise StudyNotFound(
            f"no study {study_name!r} in {storage} (studies there: {', '.join(names) or 'none'})"
        )
    if not names:
        raise StudyNotFound(f"{storage} holds no study yet; run `orchestrate tune` first")
    name = study_name or (names[0] if len(names) == 1 else None)
    study_id = opened.get_study_id_from_name(name) if name is not None else None

    server = open_dashboard(opened, host, port, study_id)
    stderr.print(f"optuna-dashboard at {server.url} (Ctrl-C to stop)", markup=False)
    server.serve()


@cli.command(name="final")
@study_option
@storage_option
@click.option(
    "--top-k",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Retrain the best K completed trials.",
)
@click.option(
    "--trial",
    "trial_numbers",
    multiple=True,
    type=click.IntRange(min=0),
    metavar="N",
    help="Retrain trial N instead of the best (repeatable); needed for several objectives.",
)
@click.option(
    "--seeds",
    default="0,1,2",
    show_default=True,
    help="Comma-separated trainer --seed values, one final run each.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Checkpoints, logs and final.json go here. Default: runs/STUDY/final.",
)
@click.option(
    "--train-limit",
    type=click.IntRange(min=1),
    help="Train on N examples. Default: the whole training file, validation part included.",
)
@click.option(
    "--threads", type=click.IntRange(min=1), help="Trainer --threads. Default: the trial's."
)
@click.option(
    "--again", is_flag=True, help="Train and test seeds that already have a recorded result."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="End one seed's run after this long (recorded as failed).",
)
@trainer_option
def final_command(
    study_name: str | None,
    storage: str,
    top_k: int,
    trial_numbers: tuple[int, ...],
    seeds: str,
    out_dir: Path | None,
    train_limit: int | None,
    threads: int | None,
    again: bool,
    timeout: float | None,
    trainer: Path | None,
) -> None:
    """Retrain the best trial (or --top-k, or each --trial) on the training and validation
    data together, once per seed, and test each model once on the test set.

    Each run trains for the trial's best_epoch (the trial's whole --epochs for the cosine
    and onecycle schedules, whose shape depends on --epochs), without --patience. Prints
    each seed's test_accuracy, test_loss and checkpoint, and their mean ± standard
    deviation; records them in the study (user attribute final:trial-N) and in
    OUT/final.json. A seed already tested is shown from the record, not run again, unless
    --again. Exits 1 when a seed's run failed (the others are still recorded).
    """
    try:
        seed_list = tuple(int(seed) for seed in seeds.split(",") if seed.strip())
    except ValueError:
        raise click.BadParameter(
            f"{seeds!r} is not a comma-separated list of integers, e.g. 0,1,2",
            param_hint="--seeds",
        ) from None
    if any(seed < 0 for seed in seed_list):
        raise click.BadParameter(
            f"{seeds!r} holds a negative seed; the trainer's --seed takes 0 or more",
            param_hint="--seeds",
        )
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise click.BadParameter(
            f"{seeds!r} must list distinct seeds, e.g. 0,1,2", param_hint="--seeds"
        )
    name = _study_name(study_name, storage)
    config = FinalConfig(
        trainer=find_trainer(trainer),
        study_name=name,
        storage=storage,
        seeds=seed_list,
        top_k=top_k,
        trials=trial_numbers,
        out_dir=out_dir or runs_dir_of(name) / "final",
        train_limit=train_limit,
        threads=threads,
        again=again,
        timeout=timeout,
    )

    # Each seed as it finishes, on stderr; the summary follows on stdout.
    configurations = run_final(
        config,
        on_run=lambda trial, run: stderr.print(f"trial {trial}, {run_line(run)}", markup=False),
    )
    click.echo(f"study {name}: final models trained on all the training data")
    for configuration in configurations:
        click.echo(
            f"trial {configuration.trial} (val_loss {configuration.value!r}; "
            f"{configuration.epochs} epochs: {configuration.epochs_reason})"
        )
        for run in configuration.runs:
            click.echo(f"  {run_line(run)}")
        for line in configuration_lines(configuration):
            click.echo(line)
    click.echo(f"results: {write_results(config, configurations)}")
    failed = sum(not run.ok for c in configurations for run in c.runs)
    if failed:
        raise RunsFailed(
            f"{failed} final run(s) failed (see above); the others are recorded, and running "
            "the same command again runs only the failed seeds"
        )


@cli.command(name="replay")
@click.argument("trial_number", metavar="TRIAL", type=click.IntRange(min=0))
@study_option
@storage_option
@click.option(
    "--tolerance",
    default=DEFAULT_TOLERANCE,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Largest absolute difference of a val_loss or val_accuracy that still matches.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="The replay's command, events and stderr. Default: runs/STUDY/replay-trial-NNNN.",
)
@trainer_option
def replay_command(
    trial_number: int,
    study_name: str | None,
    storage: str,
    tolerance: float,
    out_dir: Path | None,
    trainer: Path | None,
) -> None:
    """Run trial TRIAL's recorded command again and compare its val_loss, epoch by epoch.

    Warns when the trainer binary (sha256) or libtorch differs from the one that ran the
    trial. Exits 0 when every value matches within --tolerance, 1 when one differs, 3 when
    the replayed run gave no result to compare, 2 for a trial without recorded provenance.
    """
    name = _study_name(study_name, storage)
    study = load_study(name, storage)
    log_dir = out_dir or runs_dir_of(name) / f"replay-trial-{trial_number:04d}"
    report = replay(study, trial_number, trainer=trainer, tolerance=tolerance, log_dir=log_dir)

    for warning in report.warnings:
        stderr.print(f"[bold yellow]warning[/]: {escape(warning)}")
    click.echo(f"replayed trial {report.trial} of study {name}: {report.command}")
    for comparison in (*report.epochs, *report.final):
        mark = "ok" if comparison.matches else "DIFFERS"
        click.echo(
            f"  {comparison.what}: recorded {comparison.recorded!r}, replayed "
            f"{comparison.replayed!r}  {mark}"
        )
    if report.failure is not None:
        raise ReplayFailed(
            f"the replay of trial {report.trial} gave no result to compare "
            f"({report.failure.reason}: {report.failure.message}); see {log_dir}/stderr.log"
        )
    if not report.matches:
        raise ReplayDiffers(
            f"the replay of trial {report.trial} differs from the recorded values by more "
            f"than --tolerance {tolerance:g}"
        )
    click.echo(f"match: every value within --tolerance {tolerance:g}")


@cli.group()
def space() -> None:
    """Show the built-in search spaces, to copy and edit for `tune --space FILE`."""


@space.command("list")
def space_list() -> None:
    """List the built-in spaces and the models that use each by default."""
    for name, models in builtin_names().items():
        click.echo(f"{name}: {', '.join(models)}")


@space.command("show")
@click.argument("model")
def space_show(model: str) -> None:
    """Print the built-in space of MODEL (or a name from `space list`) as TOML.

    \b
    Example:
      orchestrate space show cnn > my.toml    # edit, then:
      orchestrate tune --space my.toml
    """
    click.echo(builtin_text(model), nl=False)


@cli.group()
def data() -> None:
    """Fetch the datasets, or check the files the trainer will read."""


dataset_option = click.option(
    "--dataset",
    "names",
    type=click.Choice([*datasets.DATASETS, "all"]),
    default="all",
    show_default=True,
    help="Which dataset.",
)


@data.command()
@dataset_option
@click.option(
    "--dest",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("data"),
    show_default=True,
    help="Root folder: MNIST goes to DEST/mnist, CIFAR-10 to DEST/cifar10.",
)
@click.option(
    "--mirror",
    "mirrors",
    multiple=True,
    metavar="URL",
    help="Fetch from this base URL instead of the public mirrors (repeatable).",
)
def download(names: str, dest: Path, mirrors: tuple[str, ...]) -> None:
    """Download MNIST and/or CIFAR-10 and check their checksums before keeping them.

    Point the trainer at the result with --data-dir DEST (or RUST_TRAINER_DATA_DIR).
    """
    chosen = datasets.DATASETS if names == "all" else (names,)
    for name in chosen:
        if name == "mnist":
            folder = datasets.download_mnist(dest, mirrors or datasets.MNIST_MIRRORS)
        else:
            folder = datasets.download_cifar10(dest, mirrors or datasets.CIFAR10_MIRRORS)
        click.echo(f"{name}: {folder}")


@data.command()
@dataset_option
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="RUST_TRAINER_DATA_DIR",
    show_envvar=True,
    default=Path("data"),
    show_default=True,
    help="The root (or dataset folder) the trainer would be given.",
)
def verify(names: str, data_dir: Path) -> None:
    """Check the dataset files under --data-dir: MNIST by checksum, CIFAR-10 by shape.

    Exits 1 when a file is missing or fails its check.
    """
    chosen = datasets.DATASETS if names == "all" else (names,)
    failed = []
    for name in chosen:
        folder = datasets.locate(name, data_dir)
        check_files = datasets.verify_mnist if name == "mnist" else datasets.verify_cifar10
        checks = check_files(folder)
        for check in checks:
            mark = "[green]ok[/]" if check.ok else "[bold red]FAIL[/]"
            stdout.print(f"{mark}  {check.path}  {check.detail if not check.ok else ''}".rstrip())
        if not all(check.ok for check in checks):
            failed.append(name)
    if failed:
        which = failed[0] if len(failed) == 1 else "all"
        raise DataError(
            f"{' and '.join(failed)}: files missing or damaged (see above); fetch them with "
            f"`orchestrate data download --dataset {which} --dest {data_dir}`, or point "
            "--data-dir at the folder that holds them"
        )


def main() -> None:
    cli(prog_name="orchestrate")


def _exit_code(error: OrchestratorError) -> int:
    return next((code for kind, code in _EXIT_CODES.items() if isinstance(error, kind)), 1)


def _study_name(name: str | None, storage: str) -> str:
    if name is not None:
        return name
    names = study_names(open_storage(storage, create=False))
    if len(names) == 1:
        return names[0]
    raise StudyNotFound(
        f"{storage} holds {len(names)} studies ({', '.join(names) or 'none'}); "
        "choose one with --study"
    )


def _show_events(process: TrainerProcess) -> None:
    for event in process.events():
        line = event_line(event)
        (stderr if line.startswith("[bold red]error") else stdout).print(line)


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    # Replace the handler of an earlier call (tests run the CLI many times in one process).
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)

    # Optuna's records go through the same handler, at the same level.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(level)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The CLI's own log handler, told apart from handlers others installed."""
