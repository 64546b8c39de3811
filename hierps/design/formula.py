"""Bambi-style model formulas turned into column roles, parsed with formulae."""

from __future__ import annotations

import pandas as pd

from hierps.design.build import ColumnRoles
from hierps.exceptions import FormulaError

__all__ = ["roles_from_formula"]


def _term_column(term: object, formula: str) -> tuple[str, bool]:
    """The column a common term names, and whether ``C()`` marks it categorical."""
    components = getattr(term, "components", None)
    if not components or len(components) != 1:
        names = [getattr(component, "name", str(component)) for component in components or ()]
        shown = ":".join(names) if names else str(term)
        raise FormulaError(
            f"term {shown} in {formula!r} is not supported: interactions must be made a column "
            f"of the data first (e.g. a column {'_'.join(names) or 'x1_x2'!r})"
        )
    component = components[0]
    call = getattr(component, "call", None)
    if call is None:
        return component.name, False
    callee = str(call.callee)
    if callee != "C" or len(call.args) != 1 or not hasattr(call.args[0], "name"):
        raise FormulaError(
            f"term {component.name} in {formula!r} is not supported: only C(column) may be "
            f"called in a hierps formula; transform the column in the data first"
        )
    return call.args[0].name, True


def roles_from_formula(formula: str, data: pd.DataFrame, outcome: str | None = None) -> ColumnRoles:
    """Column roles from ``"T ~ x1 + C(x2) + v1 + (x1 | group)"``.

    Terms constant within every group are group covariates; terms in the group-specific part
    get varying slopes (and are unit covariates); the rest are unit covariates with fixed slopes.
    """
    # formulae (and the SciPy modules it loads) is imported only when a formula is parsed.
    from formulae import model_description

    try:
        description = model_description(formula)
    except Exception as error:  # formulae raises several unrelated types
        raise FormulaError(f"cannot parse formula {formula!r}: {error}") from error
    if description.response is None:
        raise FormulaError(f"formula {formula!r} needs the treatment on the left of '~'")
    treatment = description.response.term.components[0].name

    common: list[tuple[str, bool]] = []
    varying: list[tuple[str, bool]] = []
    group_names: set[str] = set()
    has_intercept = False
    for term in description.terms:
        kind = type(term).__name__
        if kind == "Intercept":
            has_intercept = True
        elif kind == "GroupSpecificTerm":
            group_names.add(_term_column(term.factor, formula)[0])
            if type(term.expr).__name__ != "Intercept":
                varying.append(_term_column(term.expr, formula))
        else:
            common.append(_term_column(term, formula))
    if not has_intercept:
        raise FormulaError(
            f"formula {formula!r} removes the intercept; hierps models always have group intercepts"
        )
    if len(group_names) != 1:
        raise FormulaError(
            f"formula {formula!r} must name exactly one grouping column in '( … | group)'; "
            f"found {sorted(group_names) or 'none'}"
        )
    group = group_names.pop()
    if not any(
        type(t).__name__ == "GroupSpecificTerm" and type(t.expr).__name__ == "Intercept"
        for t in description.terms
    ):
        raise FormulaError(
            f"formula {formula!r} removes the group intercept ('0 +' inside the group part); "
            f"hierps models always have group intercepts"
        )
    missing = [name for name, _ in common + varying if name not in data.columns]
    if group not in data.columns:
        missing.append(group)
    if missing:
        # Let the design's validation produce the message with close matches.
        from hierps.design.build import _check_columns

        _check_columns(data, missing, "formula")

    categorical = {name for name, is_categorical in common + varying if is_categorical}
    varying_names = [name for name, _ in varying]
    unit_covariates: list[str] = []
    group_covariates: list[str] = []
    for name, _ in common:
        if name in varying_names:
            continue
        if _constant_within_groups(data, group, name):
            group_covariates.append(name)
        else:
            unit_covariates.append(name)
    for name in varying_names:
        if _constant_within_groups(data, group, name):
            raise FormulaError(
                f"{name!r} is constant within every group of {group!r}: it cannot have a slope "
                f"that varies by group; move it out of the group part"
            )
    # Varying terms keep their position among the unit covariates of the fixed part.
    ordered = [name for name, _ in common if name in varying_names or name in unit_covariates]
    ordered += [name for name in varying_names if name not in ordered]
    return ColumnRoles(
        treatment=treatment,
        group=group,
        outcome=outcome,
        unit_covariates=tuple(ordered),
        group_covariates=tuple(group_covariates),
        categorical=tuple(sorted(categorical)),
        varying_slopes=tuple(varying_names),
    )


def _constant_within_groups(data: pd.DataFrame, group: str, name: str) -> bool:
    counts = data.groupby(group, observed=True, sort=False)[name].nunique(dropna=False)
    return bool((counts <= 1).all())
