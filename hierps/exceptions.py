"""Domain errors and warnings, raised where bad input enters the package."""


class HierpsError(Exception):
    """Base class of every error hierps raises on purpose."""


class DataError(HierpsError, ValueError):
    """The data frame or the column roles given to hierps are not usable."""


class FormulaError(HierpsError, ValueError):
    """A model or balance formula cannot be parsed or refers to unusable terms."""


class ConvergenceError(HierpsError, RuntimeError):
    """A fit did not reach its convergence criterion."""


class HierpsWarning(UserWarning):
    """A problem with a defined result: the data or fit is usable but deserves a look."""
