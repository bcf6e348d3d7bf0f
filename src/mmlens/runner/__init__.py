"""Dataset jobs: a method over every row of a reader, shard by shard, resumable.

A job reads ``Sample`` rows, runs one method per batch, and keeps finished
shards; a restart skips them. Jobs may use the report layer to write their
results; methods never do.

Example:
    >>> from mmlens.runner.explain_data import explain_dataset  # doctest: +SKIP
"""
