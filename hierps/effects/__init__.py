"""Effects: estimands from weights, their standard errors, and what refines them.

Owns the Hájek CATT/ATT arithmetic shared by both modes (``estimands``), linearized standard
errors of MAP effects and Bayesian pooling of CATTs with group-level moderators
(``catt_pooling``), Bambi outcome models and augmentation (``outcome``, ``augment``) and the
school-by-school comparison of MAP and posterior results (``comparison``).
"""
