"""Parser for natstrat-style balance formulas such as ``"age + 2 * race ~ 2 + strata"``.

The text is lexed with :mod:`tokenize` and parsed with :mod:`ast`. R formula syntax is close to
Python expression syntax; the lexer bridges the gaps before :func:`ast.parse` sees the text:

* the single ``~`` token splits the formula into its two sides;
* every variable name (including R names such as ``var.name``, ``.x`` and backtick-quoted names)
  becomes a placeholder identifier, so that names clashing with Python keywords still parse;
* a lone ``.`` ("all other columns") becomes a placeholder as well;
* R's interaction operator ``:`` becomes ``**``, which, like ``:`` in R, binds tighter than ``*``
  and unary minus.

Only ``+``, ``-``, ``*``, ``:``, parentheses, names and non-negative numbers are accepted.
"""

from __future__ import annotations

import ast
import difflib
import io
import itertools
import math
import tokenize
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hierps.exceptions import FormulaError

DOT = "."
"""The R formula symbol for "every other (suitable) column of the data"."""

_ALLOWED_OPS = frozenset({"+", "-", "*", "(", ")"})
_IGNORED_TOKENS = frozenset(
    {
        tokenize.NEWLINE,
        tokenize.NL,
        tokenize.INDENT,
        tokenize.DEDENT,
        tokenize.ENDMARKER,
    }
)
_QUOTE_PREFIX = "__hierps_quoted_"
_NAME_PREFIX = "__hierps_name_"


@dataclass(frozen=True)
class RhsTerm:
    """One right-hand-side term: a variable or an interaction of variables.

    Attributes
    ----------
    variables
        Column names; more than one for an interaction ``a:b``.
    weight
        Importance multiplier of every constraint generated for this term.
    from_dot
        Whether the term came from expanding ``.`` rather than being written out.
    """

    variables: tuple[str, ...]
    weight: float
    from_dot: bool = False

    @property
    def name(self) -> str:
        """Term label used in constraint names, e.g. ``"strata"`` or ``"age_cat:sex"``."""
        return ":".join(self.variables)


@dataclass(frozen=True)
class BalanceFormula:
    """A parsed and resolved balance formula.

    Attributes
    ----------
    text
        The formula as written (after substituting ``default_rhs`` for bare entries).
    lhs
        ``(column, weight)`` pairs of the covariates to balance, in formula order.
    rhs
        Terms defining the populations within which to balance, ordered as R's
        ``terms()`` would order them (main effects before interactions).
    intercept
        Weight of the overall ("1") constraints, or ``None`` when the intercept was removed
        with ``- 1``. A weight of 0 keeps the constraints with importance 0, as natstrat does.
    """

    text: str
    lhs: tuple[tuple[str, float], ...]
    rhs: tuple[RhsTerm, ...]
    intercept: float | None


@dataclass(frozen=True)
class _Leaf:
    """A signed product in a flattened sum: ``sign * coef * factor_1 * ... * factor_k``."""

    sign: int
    coef: float
    factors: tuple[tuple[str, ...], ...]


def parse_balance_formula(
    entry: str,
    default_rhs: str | None,
    columns: Sequence[str],
    is_categorical: Callable[[str], bool],
) -> BalanceFormula:
    """Parse one entry of ``balance_formulas`` and resolve it against the data columns.

    Parameters
    ----------
    entry
        A formula ``"lhs ~ rhs"`` or a left-hand side alone, which is then balanced
        according to ``default_rhs``.
    default_rhs
        Right-hand side used for entries without ``~``.
    columns
        Column names of the data, in data order (used for ``.`` and name checks).
    is_categorical
        Whether a column can define populations (factor, character or boolean); ``.`` on the
        right-hand side expands to these columns.

    Returns
    -------
    BalanceFormula
        The resolved formula.

    Raises
    ------
    FormulaError
        If the text cannot be parsed, uses unsupported syntax, or names unknown columns.
    """
    if not isinstance(entry, str):
        raise FormulaError(
            f"balance formulas must be strings such as 'x ~ 1 + strata', got {type(entry).__name__}"
        )
    text = " ".join(entry.split())
    quoted, unquoted = _extract_backticks(text)
    sides = _split_tilde(_tokenize(unquoted, text), text)
    if len(sides) == 1:
        if default_rhs is None:
            raise FormulaError(
                f"{text!r} has no '~'; pass default_rhs to say within which populations to "
                "balance it"
            )
        text = f"{text} ~ {' '.join(default_rhs.split())}"
        quoted, unquoted = _extract_backticks(text)
        sides = _split_tilde(_tokenize(unquoted, text), text)
        if len(sides) != 2:
            raise FormulaError(f"default_rhs {default_rhs!r} must not contain '~'")
    lhs_leaves = _leaves(sides[0], quoted, text, "left")
    rhs_leaves = _leaves(sides[1], quoted, text, "right")

    known = set(columns)
    rhs, intercept = _resolve_rhs(rhs_leaves, columns, known, is_categorical, text)
    rhs_variables = {v for term in rhs for v in term.variables}
    lhs = _resolve_lhs(lhs_leaves, columns, known, rhs_variables, text)
    if intercept is None and not rhs:
        raise FormulaError(f"{text!r} removes the intercept and has no other right-hand terms")
    return BalanceFormula(text=text, lhs=tuple(lhs), rhs=tuple(rhs), intercept=intercept)


# --- lexing ---------------------------------------------------------------------------------


def _extract_backticks(text: str) -> tuple[dict[str, str], str]:
    """Replace backtick-quoted R names by placeholder identifiers."""
    pieces = text.split("`")
    if len(pieces) % 2 == 0:
        raise FormulaError(f"unbalanced backtick in balance formula {text!r}")
    quoted: dict[str, str] = {}
    for i in range(1, len(pieces), 2):
        placeholder = f"{_QUOTE_PREFIX}{len(quoted)}"
        quoted[placeholder] = pieces[i]
        pieces[i] = f" {placeholder} "
    return quoted, "".join(pieces)


def _tokenize(source: str, text: str) -> list[tokenize.TokenInfo]:
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError) as exc:
        raise FormulaError(f"cannot parse balance formula {text!r}: {exc}") from None
    return [t for t in tokens if t.type not in _IGNORED_TOKENS]


def _split_tilde(tokens: list[tokenize.TokenInfo], text: str) -> list[list[tokenize.TokenInfo]]:
    sides: list[list[tokenize.TokenInfo]] = [[]]
    for tok in tokens:
        if tok.type == tokenize.OP and tok.string == "~":
            sides.append([])
        else:
            sides[-1].append(tok)
    if len(sides) > 2:
        raise FormulaError(f"balance formula {text!r} has more than one '~'")
    if any(not side for side in sides):
        raise FormulaError(f"balance formula {text!r} has an empty side")
    return sides


def _is_name_part(tok: tokenize.TokenInfo) -> bool:
    return tok.type in (tokenize.NAME, tokenize.NUMBER) or (
        tok.type == tokenize.OP and tok.string == "."
    )


def _to_python(
    tokens: list[tokenize.TokenInfo], quoted: dict[str, str], text: str
) -> tuple[str, dict[str, str]]:
    """Turn one side's tokens into Python source plus a placeholder -> R name map."""
    parts: list[str] = []
    names: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if _is_name_part(tok):
            # R names may contain dots ("var.name", ".x"), which Python lexes as several
            # adjacent tokens; a run of tokens without whitespace in between is one name.
            j = i + 1
            while (
                j < len(tokens)
                and _is_name_part(tokens[j])
                and tokens[j].start == tokens[j - 1].end
            ):
                j += 1
            if j == i + 1 and tok.type == tokenize.NUMBER:
                parts.append(tok.string)
            else:
                placeholder = f"{_NAME_PREFIX}{len(names)}"
                names[placeholder] = "".join(quoted.get(t.string, t.string) for t in tokens[i:j])
                parts.append(placeholder)
            i = j
            continue
        if tok.type == tokenize.OP and tok.string == ":":
            parts.append("**")
        elif tok.type == tokenize.OP and tok.string in _ALLOWED_OPS:
            parts.append(tok.string)
        else:
            raise FormulaError(
                f"unsupported symbol {tok.string!r} in balance formula {text!r}; only '+', '-', "
                "'*', ':', parentheses, column names and numbers are allowed"
            )
        i += 1
    return " ".join(parts), names


# --- parsing --------------------------------------------------------------------------------


def _leaves(
    tokens: list[tokenize.TokenInfo], quoted: dict[str, str], text: str, side: str
) -> list[_Leaf]:
    source, names = _to_python(tokens, quoted, text)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError:
        raise FormulaError(
            f"cannot parse the {side}-hand side of balance formula {text!r}"
        ) from None
    signed: list[tuple[int, ast.expr]] = []
    _flatten_sum(tree.body, 1, signed)
    leaves = []
    for sign, node in signed:
        coef, factors = _product(node, names, text)
        leaves.append(_Leaf(sign, coef, tuple(factors)))
    return leaves


def _flatten_sum(node: ast.expr, sign: int, out: list[tuple[int, ast.expr]]) -> None:
    """Flatten ``a + b - (c + d)`` into signed summands, as R's ``terms()`` does."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
        _flatten_sum(node.left, sign, out)
        _flatten_sum(node.right, -sign if isinstance(node.op, ast.Sub) else sign, out)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        _flatten_sum(node.operand, -sign if isinstance(node.op, ast.USub) else sign, out)
    else:
        out.append((sign, node))


def _product(
    node: ast.expr, names: dict[str, str], text: str
) -> tuple[float, list[tuple[str, ...]]]:
    """Split a product into its numeric coefficient and its variable factors."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        left_coef, left_factors = _product(node.left, names, text)
        right_coef, right_factors = _product(node.right, names, text)
        return left_coef * right_coef, left_factors + right_factors
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return 1.0, [_interaction(node, names, text)]
    if isinstance(node, ast.Name):
        return 1.0, [(names[node.id],)]
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        value = float(node.value)
        if not math.isfinite(value):
            raise FormulaError(f"coefficient {node.value!r} in {text!r} is not finite")
        return value, []
    if isinstance(node, ast.UnaryOp):
        raise FormulaError(
            f"negative coefficients are not allowed in balance formula {text!r}; importances "
            "must be non-negative"
        )
    raise FormulaError(
        f"unsupported term in balance formula {text!r}: terms are sums of products of "
        "numbers and column names (or interactions a:b)"
    )


def _interaction(node: ast.expr, names: dict[str, str], text: str) -> tuple[str, ...]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return _interaction(node.left, names, text) + _interaction(node.right, names, text)
    if isinstance(node, ast.Name) and names[node.id] != DOT:
        return (names[node.id],)
    raise FormulaError(f"interactions in {text!r} may only join column names with ':'")


# --- resolution against the data ------------------------------------------------------------


def _check_known(name: str, known: set[str], columns: Sequence[str], text: str) -> None:
    if name in known:
        return
    close = difflib.get_close_matches(name, list(columns), n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise FormulaError(f"balance formula {text!r} refers to unknown column {name!r}{hint}")


def _resolve_lhs(
    leaves: list[_Leaf],
    columns: Sequence[str],
    known: set[str],
    rhs_variables: set[str],
    text: str,
) -> list[tuple[str, float]]:
    terms: list[tuple[str, float]] = []
    removed: set[str] = set()
    for leaf in leaves:
        if not leaf.factors:
            raise FormulaError(
                f"numbers without a column are not allowed on the left-hand side of {text!r}"
            )
        if len(leaf.factors) != 1 or len(leaf.factors[0]) != 1:
            raise FormulaError(
                f"left-hand terms of {text!r} must be single columns with optional numeric "
                "coefficients; interactions belong on the right-hand side"
            )
        name = leaf.factors[0][0]
        if leaf.sign < 0:
            if name == DOT or leaf.coef != 1.0:
                raise FormulaError(f"only plain column names can be subtracted in {text!r}")
            _check_known(name, known, columns, text)
            removed.add(name)
            continue
        if any(existing == name for existing, _ in terms):
            raise FormulaError(f"{name!r} appears more than once on the left-hand side of {text!r}")
        if name != DOT:
            _check_known(name, known, columns, text)
        terms.append((name, leaf.coef))

    explicit = {name for name, _ in terms}
    resolved: list[tuple[str, float]] = []
    for name, weight in terms:
        if name == DOT:
            # Population-defining (right-hand) columns are left out of '.': balancing a column
            # within its own levels only yields degenerate constraints.
            resolved.extend(
                (c, weight)
                for c in columns
                if c not in explicit and c not in removed and c not in rhs_variables
            )
        elif name not in removed:
            resolved.append((name, weight))
    if not resolved:
        raise FormulaError(f"the left-hand side of {text!r} selects no columns")
    return resolved


def _resolve_rhs(
    leaves: list[_Leaf],
    columns: Sequence[str],
    known: set[str],
    is_categorical: Callable[[str], bool],
    text: str,
) -> tuple[list[RhsTerm], float | None]:
    intercept = 1.0
    intercept_given = False
    intercept_removed = False
    terms: list[RhsTerm] = []
    removed: set[frozenset[str]] = set()
    for leaf in leaves:
        if not leaf.factors:
            if leaf.sign < 0:
                if leaf.coef != 1.0:
                    raise FormulaError(
                        f"only '- 1' can remove the intercept in {text!r}; subtracting other "
                        "numbers is meaningless"
                    )
                intercept_removed = True
            else:
                if intercept_given:
                    raise FormulaError(f"{text!r} gives the intercept weight more than once")
                intercept, intercept_given = leaf.coef, True
            continue
        if leaf.sign < 0:
            if leaf.coef != 1.0 or len(leaf.factors) != 1 or leaf.factors[0] == (DOT,):
                raise FormulaError(f"only plain terms can be subtracted in {text!r}")
            removed.add(frozenset(leaf.factors[0]))
            continue
        if (DOT,) in leaf.factors:
            if len(leaf.factors) != 1:
                raise FormulaError(f"'.' cannot be part of a product in {text!r}")
            terms.append(RhsTerm((DOT,), leaf.coef))
            continue
        # R's crossing: a * b means a + b + a:b, each with the product's coefficient.
        for size in range(1, len(leaf.factors) + 1):
            for combo in itertools.combinations(leaf.factors, size):
                variables = tuple(v for factor in combo for v in factor)
                terms.append(RhsTerm(variables, leaf.coef))

    for term in terms:
        for variable in term.variables:
            if variable != DOT:
                _check_known(variable, known, columns, text)
    for term in removed:
        for variable in term:
            _check_known(variable, known, columns, text)

    explicit = {frozenset(t.variables) for t in terms if t.variables != (DOT,)}
    resolved: list[RhsTerm] = []
    seen: dict[frozenset[str], RhsTerm] = {}
    for term in terms:
        if term.variables == (DOT,):
            expanded = [
                RhsTerm((c,), term.weight, from_dot=True)
                for c in columns
                if frozenset((c,)) not in explicit
                and frozenset((c,)) not in removed
                and is_categorical(c)
            ]
        else:
            expanded = [term]
        for candidate in expanded:
            key = frozenset(candidate.variables)
            if key in removed:
                continue
            if len(key) != len(candidate.variables):
                raise FormulaError(f"an interaction in {text!r} repeats a column")
            if key in seen:
                if seen[key].weight != candidate.weight:
                    raise FormulaError(
                        f"term {candidate.name!r} appears in {text!r} with different weights"
                    )
                continue
            seen[key] = candidate
            resolved.append(candidate)
    # R's model terms put main effects before two-way interactions, and so on.
    resolved.sort(key=lambda t: len(t.variables))
    return resolved, (None if intercept_removed else intercept)
