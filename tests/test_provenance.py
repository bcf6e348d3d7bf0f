"""The version manifests record is the installed mmlens, and every layer reports the same one."""

from __future__ import annotations

from importlib import metadata

import mmlens
from mmlens.provenance import mmlens_version


def test_the_version_is_the_installed_package_and_the_report_layer_gives_the_same():
    from mmlens.report.output import mmlens_version as from_report

    assert mmlens_version() == metadata.version("mmlens") == mmlens.__version__
    assert from_report is mmlens_version
