"""The ``mmlens`` command: one module per command group, assembled in :mod:`mmlens.cli.main`."""
