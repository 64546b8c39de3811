"""The calibrated-loss problems of each estimand: which arm is weighted towards which target.

Every estimand is one or two calibrated-loss problems of the same hierarchical form (the same
priors, so the same soft balance constraints), differing only in the units that get weights
and the units whose covariate moments they must match:

========  =================  ==================  =========================================
estimand  weighted units     target units        loss (with base weights ``b``)
========  =================  ==================  =========================================
ATT       controls           treated             ``Σ_C b e^η − Σ_T b η``
ATC       treated            controls            ``Σ_T b e^η − Σ_C b η``
ATE       controls; treated  all units; all      one problem of each kind, separately
========  =================  ==================  =========================================

At the optimum, the first-order conditions of the table in ``docs/estimands.md`` hold with
"treated" replaced by the target and "controls" by the weighted units. The ATE weights each arm
to the whole sample (two-sided entropy balancing when the priors are flat); its two problems
share the hierarchy and the prior scales but not their coefficients.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hierps.calibrated.problem import _LAYOUTS, ControlLayout, lay_out_controls

if TYPE_CHECKING:
    from hierps.design.build import Design

__all__ = ["ESTIMANDS", "Arm", "arm_layout", "arms_of"]

ESTIMANDS = ("att", "atc", "ate")


@dataclass(frozen=True)
class Arm:
    """One calibrated-loss problem of an estimand: the weighted arm and its target."""

    weighted: int  # the treatment value of the units that get weights
    target: str  # "treated", "control" or "all"

    @property
    def name(self) -> str:
        return "treated" if self.weighted == 1 else "control"

    def masks(self, treatment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Booleans ``(weighted, target)`` over the units."""
        weighted = treatment == self.weighted
        if self.target == "all":
            return weighted, np.ones(len(treatment), dtype=bool)
        return weighted, treatment == (1 if self.target == "treated" else 0)


_ARMS: dict[str, tuple[Arm, ...]] = {
    "att": (Arm(0, "treated"),),
    "atc": (Arm(1, "control"),),
    "ate": (Arm(0, "all"), Arm(1, "all")),
}

# Layouts of other estimands than the ATT (whose layout lives in problem._LAYOUTS), per design.
_OTHER_LAYOUTS: weakref.WeakKeyDictionary[Design, dict[Arm, ControlLayout]] = (
    weakref.WeakKeyDictionary()
)


def arms_of(estimand: str) -> tuple[Arm, ...]:
    """The calibrated-loss problems of ``estimand`` (``"att"``, ``"atc"`` or ``"ate"``)."""
    return _ARMS[estimand]


def arm_layout(design: Design, arm: Arm) -> ControlLayout:
    """The solver layout of one arm's problem, cached with the design."""
    if arm == _ARMS["att"][0]:
        layout = _LAYOUTS.get(design)
        if layout is None:
            layout = _LAYOUTS[design] = _lay_out(design, arm)
        return layout
    cache = _OTHER_LAYOUTS.setdefault(design, {})
    if arm not in cache:
        cache[arm] = _lay_out(design, arm)
    return cache[arm]


def _lay_out(design: Design, arm: Arm) -> ControlLayout:
    weighted, target = arm.masks(design.treatment)
    return lay_out_controls(
        design.unit_matrix,
        target,
        design.group_codes,
        design.n_groups,
        weighted=weighted,
        base_weights=design.base_weights,
    )
