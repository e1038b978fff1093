"""What a tuning set can certify: the accuracy bound's reach, said before any planning.

A plan must keep the one-sided Wilson lower bound of its agreement with the base network at
or above 1 - eps. Even a plan that never errs (the empty plan: every request runs the whole
network) certifies only 1 - z^2 / (n + z^2) on n tuning requests, so a small tuning set makes
every plan infeasible; planning on it would silently deploy nothing.
"""

from __future__ import annotations

import dataclasses
import math

from scipy import stats as scipy_stats


def _z(confidence: float) -> float:
    return float(scipy_stats.norm.ppf(confidence)) if confidence > 0 else 0.0


def best_certifiable_eps(num_requests: int, confidence: float) -> float:
    """The smallest eps that ``num_requests`` agreeing tuning requests certify."""
    if num_requests <= 0:
        return 1.0
    z2 = _z(confidence) ** 2
    return z2 / (num_requests + z2)


def min_tuning_requests(eps: float, confidence: float) -> int:
    """The fewest tuning requests at which a plan without errors certifies ``1 - eps``."""
    if not 0.0 < eps < 1.0:
        # eps = 0 is certifiable only by the point estimate (confidence 0), from one request.
        return 1 if confidence <= 0 and eps == 0.0 else (1 if eps >= 1.0 else math.inf)
    z2 = _z(confidence) ** 2
    # 1 - z^2 / (n + z^2) >= 1 - eps  <=>  n >= z^2 (1 - eps) / eps
    return max(1, math.ceil(z2 * (1.0 - eps) / eps - 1e-9))


@dataclasses.dataclass(frozen=True)
class Feasibility:
    """Whether the bound can be met on a tuning set, and what would make it so."""

    feasible: bool
    tuning_requests: int
    eps: float
    confidence: float
    min_requests: float  # math.inf when no number of requests certifies eps
    best_eps: float

    def message(self) -> str:
        """One clear sentence for the user: what is out of reach and what to change."""
        if self.feasible:
            return (
                f"the bound eps={self.eps:g} at confidence {self.confidence:g} can be "
                f"certified on {self.tuning_requests} tuning requests (it needs "
                f"{self.min_requests})"
            )
        need = (
            "no number of tuning requests"
            if math.isinf(self.min_requests)
            else f"at least {self.min_requests} agreeing tuning requests"
        )
        return (
            f"the accuracy bound cannot be certified: eps={self.eps:g} at confidence "
            f"{self.confidence:g} needs {need}, and {self.tuning_requests} certify plans "
            f"(the tuning requests held out of the search) (the best eps they certify is "
            f"{self.best_eps:.4f}); give more validation data (data.validation_size), a "
            "larger planner.eps, a lower planner.confidence or planner.certify_fraction, "
            "or set planner.allow_infeasible=True to plan anyway "
            "(every plan, the empty one included, is then reported as infeasible)"
        )


def check_feasibility(tuning_requests: int, eps: float, confidence: float) -> Feasibility:
    """Whether ``tuning_requests`` can certify agreement >= 1 - eps at ``confidence``."""
    need = min_tuning_requests(eps, confidence)
    return Feasibility(
        feasible=tuning_requests >= need,
        tuning_requests=int(tuning_requests),
        eps=float(eps),
        confidence=float(confidence),
        min_requests=need,
        best_eps=best_certifiable_eps(tuning_requests, confidence),
    )
