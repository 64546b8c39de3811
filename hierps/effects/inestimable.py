"""Groups whose effect cannot be estimated, named in one warning (MAP and posterior alike).

A group's effect on the treated needs weight in both arms. Groups without controls, groups
without treated units, and groups whose control weights under- or overflow (in some posterior
draws) get NaN effects; the overall effect then averages over the other groups only. One
warning names every such group and counts the treated units the overall effect leaves out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hierps.design.build import Design
from hierps.exceptions import warn

__all__ = ["excluded_treated", "inestimable_message", "warn_inestimable"]

_SHOWN = 10


def _names(labels: Sequence[object]) -> str:
    shown = ", ".join(
        repr(label.item() if isinstance(label, np.generic) else label) for label in labels[:_SHOWN]
    )
    return shown + (f" and {len(labels) - _SHOWN} more" if len(labels) > _SHOWN else "")


def excluded_treated(design: Design, estimand: str = "att") -> int:
    """The number of units of the target population — treated (ATT), controls (ATC), all
    (ATE) — in groups the overall effect leaves out because they lack an arm."""
    n_treated = design.treated_per_group
    n_control = design.units_per_group - n_treated
    if estimand == "att":
        return int(n_treated[n_control == 0].sum())
    if estimand == "atc":
        return int(n_control[n_treated == 0].sum())
    return int(design.units_per_group[(n_treated == 0) | (n_control == 0)].sum())


def inestimable_message(
    design: Design, estimand: str = "att", unstable: Mapping[int, float] | None = None
) -> str | None:
    """The warning text for the groups without an estimable effect, or ``None`` if all are.

    ``unstable`` maps group positions with both arms whose control weights under- or
    overflowed to the share of posterior draws in which that happened.
    """
    effect, overall = {"att": ("CATT", "ATT"), "atc": ("CATC", "ATC")}.get(
        estimand, ("CATE", "ATE")
    )
    n_treated = design.treated_per_group
    n_control = design.units_per_group - n_treated
    labels = design.groups.tolist()
    parts = []
    no_control = np.flatnonzero((n_treated > 0) & (n_control == 0))
    no_treated = np.flatnonzero(n_treated == 0)
    if len(no_control):
        parts.append(
            f"group(s) {_names([labels[j] for j in no_control])} of {design.roles.group!r} have "
            f"no control units"
        )
    if len(no_treated):
        parts.append(f"group(s) {_names([labels[j] for j in no_treated])} have no treated units")
    if unstable:
        shown = [f"{labels[j]!r} ({share:.0%} of draws)" for j, share in unstable.items()]
        parts.append(
            f"the control weights of group(s) {', '.join(shown[:_SHOWN])}"
            f"{f' and {len(shown) - _SHOWN} more' if len(shown) > _SHOWN else ''} under- or "
            f"overflow in some posterior draws"
        )
    if not parts:
        return None
    left_out = excluded_treated(design, estimand)
    unit = {"att": "treated unit(s)", "atc": "control unit(s)"}.get(estimand, "unit(s)")
    total = {"att": int(n_treated.sum()), "atc": int(n_control.sum())}.get(estimand, design.n_units)
    return (
        f"{'; '.join(parts)}: their {effect} cannot be estimated (NaN) and the {overall} "
        f"excludes them — {left_out} of {total} "
        f"{unit} left out" + (", plus those groups in the affected draws" if unstable else "")
    )


def warn_inestimable(
    design: Design, estimand: str = "att", unstable: Mapping[int, float] | None = None
) -> str | None:
    """Issue :func:`inestimable_message` as one warning; return it (``None``: nothing to say)."""
    message = inestimable_message(design, estimand, unstable)
    if message is not None:
        warn(message)
    return message
