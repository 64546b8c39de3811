"""Posterior mode: NUTS on the Bernoulli propensity model, and effects per draw.

Owns :func:`~hierps.posterior.run.sample` (sampler choice and checks), the per-draw CATT/ATT
computation over (covariate pattern, arm) cells with the Bayesian bootstrap, and the
:class:`~hierps.posterior.result.PosteriorResult` type with its ``DataTree``.
"""
