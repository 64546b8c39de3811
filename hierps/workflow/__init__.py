"""The analysis workflow: model file → validated spec → fit → saved result and report → CLI.

Owns the TOML model-file schema (``spec``), running a whole analysis from a spec (``analysis``),
saving and loading results as netCDF (``storage``), the Markdown report with its figures
(``report``) and the thin ``hierps`` command line (``cli``).
"""
