"""Balance: how far weighted controls are from the treated, globally and within each group.

Owns the balance statistics (standardized mean differences, variance ratios, effective sample
sizes, per-draw balance; squares and interactions in ``terms``; KS/eCDF in ``distribution``),
the one entry point :func:`~hierps.balance.table.balance_table` for MAP weights, posterior
results, natstrat selections and any user weights (several at once through ``weightings``), the
overlap check (``overlap``) and the rich rendering of its tables (``render``).
"""
