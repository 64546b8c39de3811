"""Scaling out: designs and MAP fits whose unit rows live in a Dask DataFrame."""
