"""natstrat-style balance formulas and the constraints they generate.

Owns the parser of natstrat balance formulas (``age + race ~ 1 + strata``), natstrat's
``generate_constraints`` and ``stand`` with parity to the R package (``constraints``),
balancing weights whose priors are those constraints (``weights``), and natstrat's control
selection: the sizes to take (``sizes``), the linear program on HiGHS (``optimize``), its
randomized rounding (``rounding``) and the balance check (``check``).
"""
