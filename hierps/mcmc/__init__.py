"""Shared plumbing for everything that runs NUTS or summarizes draws.

Owns the conventions declared once (interval probability, sample dims, convergence thresholds,
the sampler table), the vectorized rank-normalized R-hat and bulk ESS (``convergence``), the one
convergence check behind :func:`hierps.diagnose`, the sampling warnings, CATT pooling, outcome
models and reports (``diagnosis``), and the one draw summary (mean, sd, interval, ESS, R-hat)
every result table uses (``summary``).
"""
