"""Which mmlens wrote a file: the version every manifest (result folders, stores) records.

It sits below the store and the report layer so that both can record it.

Example:
    >>> mmlens_version() == mmlens_version()
    True
"""

from __future__ import annotations

from importlib import metadata


def mmlens_version() -> str:
    """The installed mmlens version.

    Example:
        >>> mmlens_version().count(".") >= 1
        True
    """
    try:
        return metadata.version("mmlens")
    except metadata.PackageNotFoundError:
        import mmlens

        return mmlens.__version__
