"""Balance: how far weighted controls are from the treated, globally and within each group.

Owns the balance statistics (standardized mean differences, variance ratios, effective sample
sizes, per-draw balance), the one entry point :func:`~hierps.balance.table.balance_table` for MAP
weights, posterior results and any user weights, and the rich rendering of its tables.
"""
