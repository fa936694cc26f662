"""How far along a run is, when it may be bounded by iterations, by time, or by both.

    progress = max(iteration / max_iters, elapsed / time_budget)

The run ends when progress reaches 1, whichever budget runs out first. The learning-rate schedule is a
function of iterations (warmup over `warmup_iters`, decay until `max_iters`); it is evaluated at the
*effective iteration* `progress * max_iters`, so that a time-budgeted run ends its decay exactly when its
time is up, on a fast machine or a slow one. Warmup then lasts `warmup_iters / max_iters` of the run.
Without a time budget the effective iteration is the iteration itself.
"""

from __future__ import annotations


def effective_iteration(iteration: int, max_iters: int, elapsed: float = 0.0,
                        time_budget: float | None = None) -> float:
    """`progress * max_iters`: the (possibly fractional) iteration the LR schedule is evaluated at."""
    if time_budget is None:
        return float(iteration)
    return max(float(iteration), min(elapsed / time_budget, 1.0) * max_iters)


def budget_spent(iteration: int, max_iters: int, elapsed: float = 0.0,
                 time_budget: float | None = None) -> bool:
    """Whether the run is over: all its iterations done, or its time used up."""
    return iteration >= max_iters or (time_budget is not None and elapsed >= time_budget)
