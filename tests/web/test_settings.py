"""The host check and the limits of a server."""

import pytest

from mmlens.errors import MmlensError
from mmlens.web.settings import Settings, check_host, is_loopback
from mmlens.web.uploads import read_image


def test_loopback_needs_no_token_other_hosts_do():
    assert check_host("127.0.0.1", None) is None and check_host("localhost", None) is None
    assert is_loopback("::1") and not is_loopback("192.168.1.4")
    with pytest.raises(MmlensError, match="give --token"):
        check_host("0.0.0.0", None)
    assert "token" in check_host("0.0.0.0", "long-enough-token")


def test_limits_are_checked():
    with pytest.raises(MmlensError):
        Settings(max_upload_bytes=0)
    with pytest.raises(MmlensError, match="at least 8"):
        Settings(token="short")


def test_upload_messages_name_the_users_file_not_a_temporary_path():
    with pytest.raises(MmlensError) as caught:
        read_image(b"GIF89a-not-really", "../../secret/cat.gif", max_pixels=100)
    assert "cat.gif" in str(caught.value) and "/tmp" not in str(caught.value) and "secret" not in str(caught.value)
