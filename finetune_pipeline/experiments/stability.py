"""Loss stability: one number for how much the training loss jitters once training has settled.

The losses are the `loss` values of the `event=step` lines of train.log, in order; each is the mean
per-example loss since the previous logged line.

Definition: over the second half of the logged losses (at least 4 values there, else value None,
flag "too short"), the standard deviation of the step-to-step changes divided by the mean loss
there; lower is steadier. `diverged`: any logged loss is NaN/inf (value None). `rising`: the mean of
the last quarter of the logged losses is more than 10% above the mean of the quarter before it.
Otherwise the flag is `steady`.

Details: with an odd number of losses the second half includes the middle one; the standard
deviation is the population one (numpy's default, ddof=0). Dividing by the mean loss makes runs
comparable whose losses sit at different levels. The first half is left out because a falling loss
early on is learning, not instability.
"""

from dataclasses import dataclass

import numpy as np

MIN_SETTLED_LOSSES = 4  # fewer changes than this in the second half say nothing about jitter
RISING_FACTOR = 1.10  # last quarter's mean above 110% of the quarter before it: the loss is going up

STEADY = "steady"
DIVERGED = "diverged"
RISING = "rising"
TOO_SHORT = "too short"


@dataclass(frozen=True)
class Stability:
    value: float | None  # None when the run diverged or logged too few losses
    flag: str  # steady | diverged | rising | too short


def loss_stability(losses: list[float]) -> Stability:
    if not np.all(np.isfinite(losses)):
        return Stability(None, DIVERGED)
    settled = np.asarray(losses[len(losses) // 2:], dtype=float)
    if len(settled) < MIN_SETTLED_LOSSES:
        return Stability(None, TOO_SHORT)
    mean_loss = settled.mean()
    # A cross-entropy loss is never negative, so a zero mean means every settled loss is 0: no jitter at all.
    value = float(np.diff(settled).std() / mean_loss) if mean_loss > 0 else 0.0
    return Stability(value, RISING if is_rising(losses) else STEADY)


def is_rising(losses: list[float]) -> bool:
    quarter = len(losses) // 4
    last, before = losses[-quarter:], losses[-2 * quarter:-quarter]
    return float(np.mean(last)) > RISING_FACTOR * float(np.mean(before))
