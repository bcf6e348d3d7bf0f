"""What a server allows: upload and pixel limits, queue bounds, the host it binds and the token it asks for.

Example:
    >>> Settings().max_upload_bytes
    20000000
    >>> check_host("127.0.0.1", None) is None
    True
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mmlens.data.images import MAX_PIXELS
from mmlens.errors import MmlensError

#: Hosts that only this machine can reach: no token is needed there.
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Settings:
    """Limits of one server. Every one of them has a command-line option in ``mmlens serve``.

    ``max_waiting`` jobs may wait while one runs; the next request gets 429.
    ``max_inputs`` and ``max_jobs`` bound what the server remembers (oldest
    dropped first), so memory stays flat however long it runs.
    """

    max_upload_bytes: int = 20_000_000
    max_pixels: int = MAX_PIXELS
    max_waiting: int = 4
    max_prompt_chars: int = 2_000
    max_inputs: int = 64
    max_jobs: int = 16
    token: str | None = None

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1 or self.max_pixels < 1 or self.max_waiting < 0:
            raise MmlensError("upload and pixel limits must be positive, the waiting queue at least 0")
        if self.token is not None and len(self.token) < 8:
            raise MmlensError("--token must be at least 8 characters")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only.

    Example:
        >>> is_loopback("127.0.0.2"), is_loopback("0.0.0.0")
        (True, False)
    """
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, token: str | None) -> str | None:
    """The warning to print for ``host`` (None on loopback); :class:`MmlensError` when a token is missing.

    Example:
        >>> check_host("0.0.0.0", None)
        Traceback (most recent call last):
        ...
        mmlens.errors.MmlensError: --host 0.0.0.0 is reachable from other machines: give --token SECRET too
    """
    if is_loopback(host):
        return None
    if not token:
        raise MmlensError(f"--host {host} is reachable from other machines: give --token SECRET too")
    return (f"serving on {host}: anyone who can reach it and knows the token can run the model; "
            "traffic is plain HTTP, so use a trusted network or a TLS proxy")
