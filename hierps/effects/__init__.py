"""Effects: estimands from weights, their standard errors, and what refines them.

Owns the Hájek CATT/ATT arithmetic shared by both modes (``estimands``), linearized standard
errors of MAP effects (``standard_errors``), Bambi outcome models and augmentation (``outcome``,
``augment``), Bayesian pooling of CATTs with group-level moderators (``catt_pooling``) and the
school-by-school comparison of MAP and posterior results (``comparison``).
"""
