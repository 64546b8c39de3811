"""MAP mode: the hierarchical model under the calibrated loss, whose mode is balancing weights.

Owns the calibrated-loss problem and its control layout (``problem``), the hierarchical model in
that layout (``hierarchy``), the arms each estimand weights (``arms``: ATT, ATC, ATE), the exact
block-Newton solver (``newton``), the empirical-Bayes choice of the group-level scales
(``empirical_bayes``), :func:`~hierps.calibrated.fit.fit_map` with its result type (``fit``) and
the pooling path over the group-slope scale (``path``). The first-order conditions the solver's
tests use as oracles are in ``docs/math.md``.
"""
