"""The runner's tests share the store tests' in-process reference harvest (the store a Ray run must equal)."""

from tests.store.conftest import reference  # noqa: F401  (a fixture, used by name)
