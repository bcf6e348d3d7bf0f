"""The two-row batch with targets of the readout tests, shared by the attribution tests."""

from tests.readout.conftest import PROMPTS, pair, targets  # noqa: F401  (fixtures)
