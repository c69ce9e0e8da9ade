"""Mean and 95% confidence interval over seeds (Student t, two-sided), without scipy."""

from __future__ import annotations

import math
from typing import Iterable, Optional, Tuple

# t_{0.975, df} for df = 1..30 (two-sided 95%); beyond 30 the normal 1.96 is within 2%.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


def mean_ci(values: Iterable[Optional[float]]) -> Tuple[Optional[float], Optional[float], int]:
    """(mean, half-width of the 95% CI, n) over the values that are not None; half-width None when n < 2."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(xs)
    if n == 0:
        return None, None, 0
    m = sum(xs) / n
    if n < 2:
        return m, None, n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return m, t975(n - 1) * sd / math.sqrt(n), n


def fmt(values, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    """'m ± h' (or 'm' for one value, '–' for none) of mean_ci(values) times scale."""
    m, h, n = mean_ci(values)
    if m is None:
        return "–"
    if h is None:
        return f"{m * scale:.{digits}f}{unit}"
    return f"{m * scale:.{digits}f} ± {h * scale:.{digits}f}{unit}"
