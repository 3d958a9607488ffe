"""BMI-for-age percentiles for children and teens (CDC 2000 growth charts, LMS method). Pure.

z = ((BMI / M)^L - 1) / (L * S), with L, M and S for the child's sex and age interpolated
linearly between the table's half-month rows; the percentile is the normal CDF of z.
"""

from __future__ import annotations

import bisect
import math

from inference.assist.growth_data import ROWS

MIN_AGE, MAX_AGE = 2.0, 20.0


def _lms(sex: str, age: float) -> tuple[float, float, float] | None:
    rows = ROWS.get(sex)
    if rows is None or not MIN_AGE <= age <= rows[-1][0]:
        return None
    ages = [r[0] for r in rows]
    i = bisect.bisect_left(ages, age)
    if ages[i] == age or i == 0:
        return rows[i][1], rows[i][2], rows[i][3]
    (a0, l0, m0, s0), (a1, l1, m1, s1) = rows[i - 1], rows[i]
    t = (age - a0) / (a1 - a0)
    return l0 + t * (l1 - l0), m0 + t * (m1 - m0), s0 + t * (s1 - s0)


def bmi_percentile(bmi: float, *, sex: str, age: float) -> float | None:
    """The BMI-for-age percentile (0–100) of a child aged 2 to 20 of ``sex`` (``male`` or
    ``female``), or None outside the charts."""
    lms = _lms(sex, age)
    if lms is None or bmi <= 0:
        return None
    l_, m, s = lms
    z = math.log(bmi / m) / s if l_ == 0 else ((bmi / m) ** l_ - 1) / (l_ * s)
    return 50 * (1 + math.erf(z / math.sqrt(2)))


def bmi_at_percentile(percentile: float, *, sex: str, age: float) -> float | None:
    """The BMI at ``percentile`` for ``sex`` and ``age`` (the chart's curve), or None."""
    lms = _lms(sex, age)
    if lms is None or not 0 < percentile < 100:
        return None
    l_, m, s = lms
    z = _probit(percentile / 100)
    return m * math.exp(s * z) if l_ == 0 else m * (1 + l_ * s * z) ** (1 / l_)


def _probit(p: float) -> float:
    """The standard normal quantile, by bisection on erf (exact enough for a chart)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
