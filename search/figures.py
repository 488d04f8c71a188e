"""The figures of a search, built from its trials: pure functions of plain data, so tests call
them on hand-made trials and the report, the dashboard and a notebook share them.

``StudyView`` holds what they need from one study; ``pareto_front`` finds the trials that no
other beats on both accuracy and size; ``accuracy_figure`` (against parameters or MACs),
``curves_figure`` and ``budget_figure`` return plotly figures for one study or several overlaid.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from search.study import is_diverged, is_feasible_complete, is_rejected, learning_curve
from space import format_count
from space.errors import UserError

COLORS = qualitative.Plotly
KIND_COLORS = {"complete": "#2a9d8f", "pruned": "#e9c46a", "rejected": "#e76f51"}
TEST_FIELDS = ("test_acc", "test_acc_tta", "retrain_epochs", "retrain_seeds")


# -- the data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyView:
    """What the figures and tables need from one study."""

    name: str
    budget: int  # parameters
    trials: tuple[FrozenTrial, ...]
    max_epochs: int | None = None  # of one search trial
    max_macs: int | None = None  # the compute budget, multiply-accumulates per image, if any
    dataset: str = ""
    # Test results of retrained trials by trial number, as search.retrain records them in the
    # study attribute "retrained" (a finished trial takes no new attribute of its own).
    retrained: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    # What the stages around the trials recorded (search.stages): references, yardsticks, race,
    # recipe, choice.
    stages: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, study: optuna.Study) -> StudyView:
        attrs = study.user_attrs
        settings = attrs.get("settings") or {}
        budget = attrs.get("budget", settings.get("budget"))
        if not isinstance(budget, int):
            raise UserError(
                f"study {study.study_name!r} records no parameter budget (user attr 'budget'); "
                "was it made by python -m search.run?"
            )
        return cls(
            name=study.study_name,
            budget=budget,
            trials=tuple(study.get_trials(deepcopy=False)),
            max_epochs=(settings.get("train") or {}).get("epochs"),
            max_macs=settings.get("max_macs"),
            dataset=(attrs.get("dataset") or {}).get("name", ""),
            retrained={int(k): v for k, v in (attrs.get("retrained") or {}).items()},
            stages={
                k: attrs[k]
                for k in ("references", "yardsticks", "race", "recipe", "choice")
                if k in attrs
            },
        )

    def test_result(self, t: FrozenTrial) -> dict[str, Any] | None:
        """A retrained trial's test accuracy (fraction), with TTA, epochs and seeds, from the
        study's record; None when it was not retrained."""
        record = self.retrained.get(t.number)
        if record is None or not isinstance(record.get("test_acc"), (int, float)):
            return None
        return {
            "test_acc": record["test_acc"],
            "test_acc_tta": record.get("test_acc_tta"),
            "retrain_epochs": record.get("epochs"),
            "retrain_seeds": record.get("seeds"),
        }

    def chosen_trial(self) -> int | None:
        """The number of the trial the search chose (the race's winner, as the ``choice``
        stage recorded it), or None before a choice."""
        choice = self.stages.get("choice")
        trial = choice.get("trial") if isinstance(choice, Mapping) else None
        return trial if isinstance(trial, int) else None

    def ranked(self) -> list[FrozenTrial]:
        """Complete trials within the budget, best validation accuracy first (fewer parameters
        first on a tie); a trial that repeats an earlier genotype is left out."""
        return sorted(
            (
                t
                for t in self.trials
                if is_feasible_complete(t, self.budget) and "duplicate_of" not in t.user_attrs
            ),
            key=lambda t: (-t.value, t.user_attrs["params"]),  # type: ignore[operator]
        )

    def counts(self) -> dict[str, int]:
        rejected = sum(is_rejected(t) for t in self.trials)
        return {
            "total": len(self.trials),
            "complete": sum(t.state == TrialState.COMPLETE for t in self.trials),
            "pruned": sum(t.state == TrialState.PRUNED for t in self.trials) - rejected,
            "rejected": rejected,
            "failed": sum(t.state == TrialState.FAIL for t in self.trials),
            "running": sum(t.state == TrialState.RUNNING for t in self.trials),
            "diverged": sum(is_diverged(t) for t in self.trials),  # among the pruned
        }


def is_trained_pruned(t: FrozenTrial) -> bool:
    """Pruned after some training: its value is the accuracy when it was stopped."""
    return (
        t.state == TrialState.PRUNED
        and not is_rejected(t)
        and t.value is not None
        and math.isfinite(t.value)
        and isinstance(t.user_attrs.get("params"), int)
        and "duplicate_of" not in t.user_attrs
    )


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points that no other point dominates, for a small x (parameters, MACs) and
    a large y (accuracy), in order of increasing x.

    q dominates p when q.x <= p.x and q.y >= p.y, one of them strictly; equal points do not
    dominate each other, so all copies of a front point are kept. A sweep in order of x (ties:
    higher y first) keeps a point when it beats the best y seen so far: O(n log n).
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    best_x, best_y = math.inf, -math.inf
    for i in order:
        x, y = points[i]
        if y > best_y:
            front.append(i)
            best_x, best_y = x, y
        elif y == best_y and x == best_x:
            front.append(i)
    return front


@dataclass(frozen=True)
class ReferencePoint:
    """A hand-designed network trained beside a study's winners (``search.campaign``): drawn at
    its size and test accuracy, in the colour of the study whose budget it competes under."""

    study: str  # the StudyView's name
    name: str  # resnet20, say
    params: int
    macs: int
    test_acc: float  # mean over seeds
    test_acc_std: float = 0.0
    seeds: int = 1


# -- figures ----------------------------------------------------------------------------------

Measure = Literal["params", "macs"]
_AXIS_TITLES = {"params": "parameters", "macs": "multiply-accumulates per image (MACs)"}


HOVER = (
    "<b>trial %{customdata[0]}</b> · %{customdata[6]}<br>"
    "%{customdata[1]}<br>"
    "val acc %{customdata[7]:.2%}<br>"
    "params %{customdata[2]:,} (%{customdata[3]:.1%} of budget)<br>"
    "MACs %{customdata[4]:,}<br>"
    "%{customdata[5]}"
    "<extra>%{fullData.name}</extra>"
)


def _custom(t: FrozenTrial, view: StudyView) -> list[Any]:
    test = view.test_result(t)
    status = str(t.user_attrs.get("status", t.state.name.lower()))
    if test is not None:
        status += f"<br>test acc {test['test_acc']:.2%} (retrained)"
    return [
        t.number,
        t.user_attrs.get("key", ""),
        t.user_attrs.get("params", 0),
        t.user_attrs.get("params", 0) / view.budget,
        t.user_attrs.get("macs", 0),
        status,
        view.name,
        t.value,
    ]


def _label(view: StudyView, many: bool, what: str) -> str:
    return f"{view.name}: {what}" if many else what


def accuracy_figure(
    views: Sequence[StudyView],
    *,
    measure: Measure = "params",
    references: Sequence[ReferencePoint] = (),
) -> go.Figure:
    """Validation accuracy against parameters (or MACs) for every trained trial of each study:
    complete trials solid, pruned ones faded at the accuracy they had when stopped, the front of
    the complete trials as a staircase, retrained trials' test accuracy as stars, reference
    networks' test accuracy as labelled diamonds, and for parameters a dashed line at each
    study's budget."""
    many = len(views) > 1
    budgets = [v.budget for v in views]
    log_x = measure == "macs" or max(budgets) > 3 * min(budgets)
    fig = go.Figure()
    for i, view in enumerate(views):
        color = COLORS[i % len(COLORS)]
        complete = view.ranked()
        pruned = [t for t in view.trials if is_trained_pruned(t)]
        fig.add_trace(
            go.Scatter(
                x=[t.user_attrs.get(measure) for t in pruned],
                y=[t.value for t in pruned],
                mode="markers",
                name=_label(view, many, "pruned (accuracy when stopped)"),
                marker={"color": color, "symbol": "circle-open", "size": 7, "opacity": 0.5},
                customdata=[_custom(t, view) for t in pruned],
                hovertemplate=HOVER,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[t.user_attrs.get(measure) for t in complete],
                y=[t.value for t in complete],
                mode="markers",
                name=_label(view, many, "complete"),
                marker={"color": color, "size": 8, "opacity": 0.75},
                customdata=[_custom(t, view) for t in complete],
                hovertemplate=HOVER,
            )
        )
        points = [(t.user_attrs.get(measure, 0), t.value) for t in complete]
        front = [complete[j] for j in pareto_front(points)]  # type: ignore[arg-type]
        fig.add_trace(
            go.Scatter(
                x=[t.user_attrs.get(measure) for t in front],
                y=[t.value for t in front],
                mode="lines+markers+text",
                line={"color": color, "shape": "hv", "width": 2},
                marker={"color": color, "size": 12, "line": {"color": "#222", "width": 1.5}},
                text=[f"#{t.number}" for t in front],
                textposition="top left",
                textfont={"size": 11, "color": "#333"},
                name=_label(
                    view,
                    many,
                    f"Pareto front (fewest {'parameters' if measure == 'params' else 'MACs'})",
                ),
                customdata=[_custom(t, view) for t in front],
                hovertemplate=HOVER,
            )
        )
        tested = [(t, r) for t in complete if (r := view.test_result(t)) is not None]
        if tested:
            chosen = view.chosen_trial()
            fig.add_trace(
                go.Scatter(
                    x=[t.user_attrs.get(measure) for t, _ in tested],
                    y=[r["test_acc"] for _, r in tested],
                    mode="markers+text",
                    name=_label(view, many, "test accuracy (retrained)"),
                    marker={"color": color, "symbol": "star", "size": 14, "line": {"width": 1}},
                    text=[star_text(t.number, chosen) for t, _ in tested],
                    textposition="middle right",
                    textfont={"size": 11, "color": "#333"},
                    customdata=[_test_custom(t, r) for t, r in tested],
                    hovertemplate=(
                        "<b>trial %{customdata[0]}</b> retrained<br>%{customdata[1]}<br>"
                        "test acc %{y:.2%}%{customdata[2]}<br>val acc %{customdata[3]:.2%}"
                        "<extra>%{fullData.name}</extra>"
                    ),
                )
            )
        ours = [r for r in references if r.study == view.name]
        if ours:
            fig.add_trace(
                go.Scatter(
                    x=[getattr(r, measure) for r in ours],
                    y=[r.test_acc for r in ours],
                    mode="markers+text",
                    name=_label(view, many, "reference network, test accuracy"),
                    marker={
                        "color": "white",
                        "symbol": "diamond",
                        "size": 13,
                        "line": {"color": color, "width": 2.5},
                    },
                    text=[r.name for r in ours],
                    textposition=_name_sides(
                        [getattr(r, measure) for r in ours], _drawn_xs(views, measure), log_x
                    ),
                    textfont={"size": 11, "color": "#333"},
                    customdata=[[r.name, r.params, r.macs, r.test_acc_std, r.seeds] for r in ours],
                    hovertemplate=(
                        "<b>%{customdata[0]}</b> (reference)<br>test acc %{y:.2%} "
                        "± %{customdata[3]:.2%} over %{customdata[4]} seed(s)<br>"
                        "params %{customdata[1]:,}<br>MACs %{customdata[2]:,}"
                        "<extra>%{fullData.name}</extra>"
                    ),
                )
            )
        if measure == "params":
            _budget_line(fig, view.budget, color=color, log_x=log_x, label=budget_text(view))
        elif view.max_macs is not None:
            label = f"MACs budget {format_count(view.max_macs)}"
            _budget_line(fig, view.max_macs, color=color, log_x=log_x, label=label)
    what = "parameters" if measure == "params" else "MACs"
    any_tested = bool(references) or any(
        v.test_result(t) is not None for v in views for t in v.ranked()
    )
    fig.update_layout(
        title={"text": _title(views, f"validation accuracy vs {what}")},
        template="plotly_white",
        font={"size": 14},
        hovermode="closest",
        legend={"orientation": "h", "yanchor": "top", "y": -0.15, "x": 0},
        margin={"t": 90},
    )
    fig.update_xaxes(
        title=_AXIS_TITLES[measure],
        type="log" if log_x else "linear",
        tickformat="~s",
        # Log ticks at 1, 2 and 5 per decade: every digit ("D1") runs 700k800k900k together.
        dtick="D2" if log_x else None,
    )
    accuracy = (
        "accuracy (dots: validation; stars, diamonds: test)"
        if references
        else "accuracy (dots: validation, stars: test)"
        if any_tested
        else "validation accuracy"
    )
    fig.update_yaxes(title=accuracy, tickformat=".0%")
    return fig


def star_text(number: int, chosen: int | None) -> str:
    """A retrained trial's label beside its star: its number, and whether it is the choice."""
    return f"#{number}, the choice" if number == chosen else f"#{number}"


def _drawn_xs(views: Sequence[StudyView], measure: Measure) -> list[float]:
    """The x of every trial and budget line the accuracy figure draws (the caller adds its
    references)."""
    drawn = [t for v in views for t in (*v.ranked(), *filter(is_trained_pruned, v.trials))]
    xs = [t.user_attrs.get(measure) for t in drawn]
    if measure == "params":
        xs += [v.budget for v in views]
    return [float(x) for x in xs if isinstance(x, (int, float)) and x > 0]


def _name_sides(xs: Sequence[float], others: Sequence[float], log_x: bool) -> list[str]:
    """Where each reference's name goes: left of its diamond, except in the left 15% of the x
    range, where a name written leftwards runs off the figure (dwnext-100k at 99k beside
    400k-parameter networks): those go to the right."""
    scale = (lambda x: math.log10(x)) if log_x else (lambda x: x)
    span = [scale(x) for x in [*xs, *others] if x > 0]
    lo, hi = min(span, default=0.0), max(span, default=0.0)

    def near_left(x: float) -> bool:
        return hi > lo and x > 0 and (scale(x) - lo) / (hi - lo) < 0.15

    return ["bottom right" if near_left(x) else "bottom left" for x in xs]


def _test_custom(t: FrozenTrial, result: Mapping[str, Any]) -> list[Any]:
    extra = ""
    if isinstance(result.get("test_acc_tta"), (int, float)):
        extra += f"<br>with TTA {result['test_acc_tta']:.2%}"
    if result.get("retrain_epochs") is not None:
        extra += f"<br>{result['retrain_epochs']} epochs"
    if result.get("retrain_seeds"):
        extra += f", seeds {result['retrain_seeds']}"
    return [t.number, t.user_attrs.get("key", ""), extra, t.value]


def budget_text(view: StudyView) -> str:
    macs = f", {format_count(view.max_macs)} MACs" if view.max_macs is not None else ""
    return f"budget {format_count(view.budget)}{macs}"


def _budget_line(fig: go.Figure, budget: int, *, color: str, log_x: bool, label: str) -> None:
    # plotly.js places a line shape in data coordinates on any axis type, but an annotation on a
    # log axis at log10 of the value (checked by eye on the PNGs: both sit on the budget).
    fig.add_shape(
        type="line",
        xref="x",
        yref="paper",
        x0=budget,
        x1=budget,
        y0=0,
        y1=1,
        line={"color": color, "dash": "dash", "width": 2},
        name=f"budget:{budget}",
    )
    fig.add_annotation(
        x=math.log10(budget) if log_x else budget,
        y=1,
        xref="x",
        yref="paper",
        text=label,
        showarrow=False,
        xanchor="right",
        yanchor="bottom",
        font={"color": color, "size": 13},
    )


def _title(views: Sequence[StudyView], what: str) -> str:
    if len(views) == 1:
        v = views[0]
        c = v.counts()
        epochs = f", trials of up to {v.max_epochs} epochs" if v.max_epochs else ""
        detail = (
            f"{c['complete']} complete, {c['pruned']} pruned, {c['rejected']} rejected over "
            f"budget{epochs}"
        )
        return f"{v.name}: {what}<br><sup>{detail}</sup>"
    return f"{what}<br><sup>{', '.join(f'{v.name} ({budget_text(v)})' for v in views)}</sup>"


def curves_figure(views: Sequence[StudyView], *, top: int = 10) -> go.Figure:
    """Validation accuracy per epoch of each study's ``top`` trials, over the faint curves of
    all its other trained trials (where Hyperband stopped them)."""
    many = len(views) > 1
    shown = max(min(top, len(v.ranked())) for v in views)
    fig = go.Figure()
    colors = iter(COLORS * (1 + top * len(views) // len(COLORS)))
    for i, view in enumerate(views):
        best = view.ranked()[:top]
        chosen = {t.number for t in best}
        xs: list[float | None] = []
        ys: list[float | None] = []
        for t in view.trials:
            curve = learning_curve(t)
            if t.number in chosen or not curve or is_rejected(t) or "duplicate_of" in t.user_attrs:
                continue
            xs += [*(e for e, _ in curve), None]  # None breaks the line between trials
            ys += [*(a for _, a in curve), None]
        if xs:
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers",  # a trial pruned after one epoch is a dot
                    line={"color": "rgba(120,120,120,0.3)", "width": 1},
                    marker={"color": "rgba(120,120,120,0.4)", "size": 4},
                    name=_label(view, many, "other trials"),
                    hoverinfo="skip",
                )
            )
        for t in best:
            curve = learning_curve(t)
            fig.add_trace(
                go.Scatter(
                    x=[e for e, _ in curve],
                    y=[a for _, a in curve],
                    mode="lines+markers",
                    line={
                        "color": next(colors),
                        "width": 2,
                        "dash": ("solid", "dash", "dot")[i % 3],
                    },
                    marker={"size": 5},
                    name=(
                        f"{view.name + ' ' if many else ''}#{t.number} {t.value:.1%}, "
                        f"{format_count(t.user_attrs['params'])}"
                    ),
                    customdata=[[t.number, t.user_attrs.get("key", "")]] * len(curve),
                    hovertemplate=(
                        "trial %{customdata[0]}, epoch %{x}: %{y:.2%}<br>%{customdata[1]}"
                        "<extra></extra>"
                    ),
                )
            )
    fig.update_layout(
        title={"text": _title(views, f"learning curves of the best {shown} trials")},
        template="plotly_white",
        font={"size": 14},
        margin={"t": 90},
    )
    fig.update_xaxes(
        title="epoch", dtick=1 if max((v.max_epochs or 0) for v in views) <= 20 else None
    )
    fig.update_yaxes(title="validation accuracy", tickformat=".0%")
    return fig


def budget_figure(views: Sequence[StudyView]) -> go.Figure:
    """Histogram of params / budget over every drawn candidate, stacked by fate; one row per
    study. A bar past 100% holds candidates rejected over budget."""
    fig = make_subplots(
        rows=len(views),
        cols=1,
        shared_xaxes=True,
        subplot_titles=[f"{v.name} ({budget_text(v)})" for v in views] if len(views) > 1 else None,
        vertical_spacing=0.12 if len(views) > 1 else 0.05,
    )
    top = max(
        [1.05] + [t.user_attrs["params"] / v.budget for v in views for t in v.trials if _drawn(t)]
    )
    for row, view in enumerate(views, start=1):
        drawn = [t for t in view.trials if _drawn(t)]
        for kind in ("complete", "pruned", "rejected"):
            shares = [t.user_attrs["params"] / view.budget for t in drawn if _kind(t) == kind]
            fig.add_trace(
                go.Histogram(
                    x=shares,
                    xbins={"start": 0.0, "end": top + 0.05, "size": 0.05},
                    name=kind,
                    legendgroup=kind,
                    showlegend=row == 1,
                    marker={"color": KIND_COLORS[kind]},
                    hovertemplate="%{x}: %{y} trials<extra>" + kind + "</extra>",
                ),
                row=row,
                col=1,
            )
        fig.add_vline(x=1.0, line_dash="dash", line_color="#444", row=row, col=1)
    fig.update_layout(
        barmode="stack",
        title={"text": _title(views, "budget use: parameters / budget of each candidate")},
        template="plotly_white",
        font={"size": 14},
        margin={"t": 90},
    )
    fig.update_xaxes(tickformat=".0%", range=[0, top + 0.05])
    fig.update_xaxes(title="share of the budget (dashed: the budget)", row=len(views), col=1)
    # Whole trials: ticks at every integer while the bars are short.
    fig.update_yaxes(
        title="trials", rangemode="tozero", dtick=1 if _tallest_bar(views) <= 8 else None
    )
    return fig


def _tallest_bar(views: Sequence[StudyView]) -> int:
    counts = Counter(
        (v.name, int(t.user_attrs["params"] / v.budget / 0.05))
        for v in views
        for t in v.trials
        if _drawn(t)
    )
    return max(counts.values(), default=0)


def _drawn(t: FrozenTrial) -> bool:
    return isinstance(t.user_attrs.get("params"), int) and t.state in (
        TrialState.COMPLETE,
        TrialState.PRUNED,
    )


def _kind(t: FrozenTrial) -> str:
    if is_rejected(t):
        return "rejected"
    return "complete" if t.state == TrialState.COMPLETE else "pruned"
