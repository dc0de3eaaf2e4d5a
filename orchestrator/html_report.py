"""`orchestrate report`: one self-contained HTML file and a PNG per plot for a study.

The HTML file embeds plotly.js itself, so it opens from disk with no server and no
network: a summary (best trial or Pareto front, trials per state), then the optimisation
history, parameter importances, parallel coordinates, slices, the epochs' val_loss
(intermediate values) and, with several objectives, the Pareto front. The PNGs are the
same plots drawn by matplotlib, for pasting into documents. A plot that cannot be drawn
yet (importances from one completed trial, curves no trial reported) is left out with a
note saying why, instead of failing the whole report.
"""

from __future__ import annotations

import html
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from orchestrator.errors import NothingToReport
from orchestrator.export import objective_names
from orchestrator.study import CURVE_ATTR, state_counts

logger = logging.getLogger(__name__)

HTML_NAME = "report.html"
# Importances compare the completed trials: with fewer there is nothing to compare.
MIN_IMPORTANCE_TRIALS = 2
_PLOT_HEIGHT = "480px"


@dataclass(frozen=True)
class Plot:
    """One plot of the report: a plotly figure for the HTML, a matplotlib one for the PNG,
    or the reason it was left out."""

    key: str
    title: str
    figure: Any = None
    draw_png: Callable[[], Any] | None = None
    note: str | None = None


@dataclass
class Report:
    html: Path
    pngs: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def default_out_dir(study_name: str) -> Path:
    """reports/STUDY, with the study's name made safe as a folder name."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in study_name)
    return Path("reports") / (safe.strip(".") or "study")


def write_report(study: optuna.Study, out_dir: Path) -> Report:
    """Writes `out_dir/report.html` and one PNG per plot drawn; returns what was written."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        counts = ", ".join(f"{n} {s}" for s, n in state_counts(study).items()) or "no trials"
        raise NothingToReport(
            f"study {study.study_name!r} has no completed trial to report ({counts}); "
            "run `orchestrate tune` on it until one completes"
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report(html=out_dir / HTML_NAME)
    with _quiet_plotting():
        plots = list(_plots(study, len(completed)))
        for plot in plots:
            png = _save_png(plot, out_dir)
            if png is not None:
                report.pngs.append(png)
            if plot.note is not None:
                report.skipped.append(f"{plot.title}: {plot.note}")

    report.html.write_text(_page(study, plots), encoding="utf-8")
    return report


def _plots(study: optuna.Study, completed: int) -> Iterator[Plot]:
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as mpl

    names = objective_names(study)
    several = len(names) > 1

    for index, name in enumerate(names):
        # Optuna asks for a target when a study has several objectives.
        target = _target(index) if several else None
        suffix = f"-{_slug(name)}" if several else ""
        about = f" ({name})" if several else ""
        common: dict[str, Any] = {"target": target, "target_name": name}

        yield _plot(
            f"history{suffix}",
            f"Optimisation history{about}",
            partial(optuna.visualization.plot_optimization_history, study, **common),
            partial(mpl.plot_optimization_history, study, **common),
        )

        if completed < MIN_IMPORTANCE_TRIALS:
            yield Plot(
                f"importances{suffix}",
                f"Parameter importances{about}",
                note=f"needs at least {MIN_IMPORTANCE_TRIALS} completed trials; the study "
                f"has {completed}",
            )
        elif not _varied_params(study):
            yield Plot(
                f"importances{suffix}",
                f"Parameter importances{about}",
                note="no parameter took more than one value in the completed trials",
            )
        else:
            # PED-ANOVA: deterministic (the HTML and the PNG agree) and needs no
            # scikit-learn, unlike fANOVA.
            evaluator = PedAnovaImportanceEvaluator()
            kwargs = {**common, "evaluator": evaluator}
            if several and study.directions[index] == StudyDirection.MAXIMIZE:
                # PED-ANOVA asks what makes the target low; a maximised one is negated.
                kwargs["target"] = _target(index, sign=-1.0)
            yield _plot(
                f"importances{suffix}",
                f"Parameter importances{about}",
                partial(optuna.visualization.plot_param_importances, study, **kwargs),
                partial(mpl.plot_param_importances, study, **kwargs),
            )

        yield _plot(
            f"parallel{suffix}",
            f"Parallel coordinates{about}",
            partial(optuna.visualization.plot_parallel_coordinate, study, **common),
            partial(mpl.plot_parallel_coordinate, study, **common),
        )
        yield _plot(
            f"slice{suffix}",
            f"Slices{about}",
            partial(optuna.visualization.plot_slice, study, **common),
            partial(mpl.plot_slice, study, **common),
        )

    if not any(_curve(t) for t in study.get_trials(deepcopy=False)):
        yield Plot(
            "intermediate",
            "Learning curves (val_loss per epoch)",
            note="no trial reported a value per epoch",
        )
    else:
        yield _plot(
            "intermediate",
            "Learning curves (val_loss per epoch)",
            partial(_curves, study),
            partial(_curves_png, study),
        )

    if several and len(names) > 3:
        yield Plot("pareto", "Pareto front", note="drawn for 2 or 3 objectives only")
    elif several:
        yield _plot(
            "pareto",
            "Pareto front",
            lambda: optuna.visualization.plot_pareto_front(study, target_names=names),
            lambda: mpl.plot_pareto_front(study, target_names=names),
        )


def _curve(trial: FrozenTrial) -> dict[int, float]:
    """A trial's val_loss per epoch: its intermediate values, or with several objectives
    (which Optuna records no intermediate values for) the attribute tune keeps instead."""
    if trial.intermediate_values:
        return dict(trial.intermediate_values)
    kept = trial.user_attrs.get(CURVE_ATTR)
    if not isinstance(kept, dict):
        return {}
    return {int(epoch): float(value) for epoch, value in kept.items() if value is not None}


def _curves(study: optuna.Study) -> Any:
    import plotly.graph_objects as go

    figure = go.Figure()
    for trial in study.get_trials(deepcopy=False):
        curve = sorted(_curve(trial).items())
        if curve:
            figure.add_trace(
                go.Scatter(
                    x=[epoch for epoch, _ in curve],
                    y=[value for _, value in curve],
                    mode="lines+markers",
                    name=f"trial {trial.number} ({trial.state.name})",
                )
            )
    figure.update_layout(title="Learning curves", xaxis_title="epoch", yaxis_title="val_loss")
    figure.update_xaxes(dtick=1)
    return figure


def _curves_png(study: optuna.Study) -> Any:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    _, axes = plt.subplots()
    for trial in study.get_trials(deepcopy=False):
        curve = sorted(_curve(trial).items())
        if curve:
            axes.plot([e for e, _ in curve], [v for _, v in curve], marker="o", alpha=0.7)
    axes.set_title("Learning curves")
    axes.set_xlabel("epoch")
    axes.set_ylabel("val_loss")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return axes


def _plot(
    key: str, title: str, make_figure: Callable[[], Any], draw_png: Callable[[], Any]
) -> Plot:
    """The plot, or a note when Optuna cannot draw it for this study."""
    try:
        figure = make_figure()
    except (ValueError, RuntimeError) as error:
        logger.info("report: %s left out: %s", title, error)
        return Plot(key, title, note=f"could not be drawn: {error}")
    if not figure.data:
        return Plot(key, title, note="no trial has data for it yet")
    return Plot(key, title, figure=figure, draw_png=draw_png)


def _save_png(plot: Plot, out_dir: Path) -> Path | None:
    if plot.draw_png is None:
        return None
    import matplotlib

    # No display is needed, or wanted, to write files.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        axes = plot.draw_png()
    except (ValueError, RuntimeError) as error:
        logger.warning("report: no PNG of %s: %s", plot.title, error)
        return None
    # Slices come as an array of axes, one per parameter, on one figure.
    first = axes.flat[0] if hasattr(axes, "flat") else axes
    figure = first.get_figure()
    figure.set_size_inches(max(figure.get_figwidth(), 8), max(figure.get_figheight(), 5))
    path = out_dir / f"{plot.key}.png"
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def _page(study: optuna.Study, plots: list[Plot]) -> str:
    from plotly.offline import get_plotlyjs

    sections = "\n".join(_section(plot) for plot in plots)
    name = html.escape(study.study_name)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Study {name}</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }}
.note {{ color: #7a5b00; background: #fff8e1; padding: 0.5em 1em; }}
code {{ font-size: 0.85em; word-break: break-all; }}
</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head>
<body>
<h1>Study {name}</h1>
{_summary(study)}
{sections}
</body>
</html>
"""


def _section(plot: Plot) -> str:
    import plotly.io

    title = html.escape(plot.title)
    if plot.figure is None:
        note = html.escape(plot.note or "left out")
        return (
            f'<section id="{plot.key}">\n<h2>{title}</h2>\n<p class="note">{note}</p>\n</section>'
        )
    figure = plotly.io.to_html(
        plot.figure,
        include_plotlyjs=False,
        full_html=False,
        div_id=f"plot-{plot.key}",
        default_height=_PLOT_HEIGHT,
        config={"displaylogo": False},
    )
    return f'<section id="{plot.key}">\n<h2>{title}</h2>\n{figure}\n</section>'


def _summary(study: optuna.Study) -> str:
    names = objective_names(study)
    directions = ", ".join(
        f"{name} ({d.name.lower()})" for name, d in zip(names, study.directions, strict=True)
    )
    counts = state_counts(study)
    rows = [
        ("objectives", directions),
        ("trials", str(sum(counts.values()))),
        *((f"{state.lower()}", str(n)) for state, n in counts.items()),
    ]
    table = _table(["", ""], rows, head=False)

    if len(names) == 1:
        best = study.best_trial
        heading = f"Best trial: {best.number}"
        body = _table(["trial", names[0], "params"], [_trial_row(best)])
    else:
        front = sorted(study.best_trials, key=lambda t: t.number)
        heading = f"Pareto front: {len(front)} trials"
        body = _table(["trial", ", ".join(names), "params"], [_trial_row(t) for t in front])
    command = study.best_trial.user_attrs.get("command") if len(names) == 1 else None
    rerun = (
        f"<p>Re-run it: <code>{html.escape(command)}</code></p>"
        if isinstance(command, str)
        else ""
    )
    return (
        f'<section id="summary">\n<h2>Summary</h2>\n{table}\n<h3>{html.escape(heading)}</h3>\n'
        f"{body}\n{rerun}\n</section>"
    )


def _trial_row(trial: FrozenTrial) -> tuple[str, str, str]:
    values = ", ".join(f"{v:.6g}" for v in trial.values or [])
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    return str(trial.number), values, params


def _table(header: list[str], rows: Sequence[tuple[str, ...]], *, head: bool = True) -> str:
    top = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if head else ""
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table>{top}{body}</table>"


def _target(index: int, sign: float = 1.0) -> Callable[[FrozenTrial], float]:
    def value(trial: FrozenTrial) -> float:
        assert trial.values is not None
        return sign * float(trial.values[index])

    return value


def _varied_params(study: optuna.Study) -> bool:
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    seen: dict[str, set[str]] = {}
    for trial in completed:
        for name, value in trial.params.items():
            seen.setdefault(name, set()).add(repr(value))
    return any(len(values) > 1 for values in seen.values())


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "objective"


@contextmanager
def _quiet_plotting() -> Iterator[None]:
    """Optuna marks its matplotlib plots experimental and warns on every call; the report
    is no place for those warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", module="optuna.visualization")
        # Said once per objective: importances are of reaching low values, as wanted here.
        warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
        yield
