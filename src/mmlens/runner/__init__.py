"""Dataset jobs: a method over every row of a reader, shard by shard, resumable.

A job reads ``Sample`` rows, runs one method per batch, and keeps finished
shards; a restart skips them. Jobs may use the report layer to write their
results; methods never do. :mod:`mmlens.runner.neurons` is the one-pass job
behind ``mmlens neurons`` and the web app's Neurons page (the command and the
page both call it; neither imports the other).

Example:
    >>> from mmlens.runner.explain_data import explain_dataset  # doctest: +SKIP
"""
