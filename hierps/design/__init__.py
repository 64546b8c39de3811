"""The validated design: what every mode of hierps reads, and nothing that depends on PyMC.

Owns input validation (treatment, groups, outcome, covariates), categorical encoding and
missingness indicators, standardization, the Bambi-style formula front end and the table of
hyperparameters with their defaults. Data flows one way: a DataFrame goes in, a
:class:`~hierps.design.build.Design` of plain arrays with named labels comes out.
"""
