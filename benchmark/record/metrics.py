"""A row's metric, by the name its `metric` column holds: the task specs' own metrics (downstream.tasks.ALL_TASKS),
then those downstream.metrics defines. Every reader of rows (aggregation aside: it only averages) asks this `Metric`
its direction, range and display instead of assuming an accuracy."""
from __future__ import annotations

from downstream.metrics import METRICS, Metric
from downstream.tasks import ALL_TASKS


def metric_of(name: str) -> Metric:
    """The `Metric` named `name`; ValueError naming the known ones when no registered task or metric has it."""
    name = str(name)
    for task in ALL_TASKS.values():  # read at call time: a task registered later (a test's) is found too
        if task.metric.name == name:
            return task.metric
    if name in METRICS:
        return METRICS[name]
    known = sorted({t.metric.name for t in ALL_TASKS.values()} | set(METRICS))
    raise ValueError(f"metric {name!r} of the rows: no registered task or metric has it (known: {', '.join(known)}); "
                     f"register its task in downstream.tasks")


def sign(name: str) -> float:
    """+1 for a higher-is-better metric, -1 for a lower-is-better one: sign x score grows as the score improves."""
    return 1.0 if metric_of(name).higher_is_better else -1.0


def shown_bounds(name: str, scale: float = 1.0) -> tuple[float, float]:
    """The metric's range as displayed (`scale` x the metric): intervals drawn around a mean are cut to it, so a
    95 % CI of an error rate near 0 does not reach below 0, nor one of an accuracy near 100 % above it."""
    lo, hi = metric_of(name).bounds
    return lo * scale, hi * scale


def second_metric_of(task: str) -> Metric | None:
    """The second score a task's rows keep in `test_utt_metric` (TaskSpec.second_metric), for the task named `task`
    or `<corpus>-<task>` (the report's name when the rows hold several corpora); None for an unknown task."""
    spec = ALL_TASKS.get(str(task))
    if spec is None:
        spec = next((t for n, t in ALL_TASKS.items() if str(task).endswith("-" + n)), None)
    return None if spec is None else spec.second_metric
