"""XIEHE_OFFSITE parsing: what is accepted, and what is refused before anything runs."""

from __future__ import annotations

import pytest

from workers.config import ConfigError
from workers.offsite.rclone import Rclone, _config
from workers.offsite.settings import load


def test_sftp_and_s3_remotes_with_credentials_from_files(tmp_path):
    secret = tmp_path / "oss_secret"
    secret.write_text("s3cr3t-value\n")
    offsite = load(
        {
            "XIEHE_OFFSITE": "dr=sftp://backup@dr-host:2222/srv/xiehe?key_file=/run/secrets/k,"
            " oss=s3://bucket/prefix/?endpoint=https://oss-cn-beijing.aliyuncs.com",
            "XIEHE_OFFSITE_OSS_ACCESS_KEY_ID": "AKID",
            "XIEHE_OFFSITE_OSS_SECRET_ACCESS_KEY_FILE": str(secret),
            "XIEHE_OFFSITE_BWLIMIT": "10M",
        }
    )
    dr, oss = offsite.remotes
    assert (dr.kind, dr.host, dr.port, dr.user, dr.path) == (
        "sftp", "dr-host", 2222, "backup", "/srv/xiehe",
    )  # fmt: skip
    assert dr.url == "sftp://backup@dr-host:2222/srv/xiehe"  # shown without options
    assert oss.options["provider"] == "Alibaba"
    assert oss.secrets["SECRET_ACCESS_KEY"] == "s3cr3t-value"
    assert "s3cr3t" not in repr(oss) and "s3cr3t" not in oss.url
    assert Rclone(oss, offsite).root == "xiehe_oss:bucket/prefix"
    assert Rclone(dr, offsite).root == "xiehe_dr:/srv/xiehe"
    assert _config(oss)["secret_access_key"] == "s3cr3t-value"  # given to rclone by env only
    assert _config(dr)["key_file"] == "/run/secrets/k"
    assert offsite.remote("oss") is oss
    assert dr.prunes and not load({"XIEHE_OFFSITE": "w=s3://b/p?prune=off"}).remotes[0].prunes
    with pytest.raises(ConfigError, match="unknown off-site remote 'nope'; configured: dr, oss"):
        offsite.remote("nope")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("dr=sftp://backup:hunter2@host/x", "password in the URL would be logged"),
        ("dr=s3://bucket/p?secret_access_key=abc", "unknown option 'secret_access_key'"),
        ("dr=ftp://host/x", "expected sftp://"),
        ("dr=sftp://host/x", "needs a user"),
        ("sftp://u@host/x", "expected NAME=URL"),
        ("dr=sftp://u@h/x,dr=sftp://u@h/y", "same name"),
        ("dr=sftp://u@h:port/x", "port is not a number"),
        ("dr=sftp://u@h/x?prune=maybe", "prune must be on or off"),
    ],
)
def test_bad_remotes_are_refused_without_echoing_secrets(value, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load({"XIEHE_OFFSITE": value})
    assert "hunter2" not in str(caught.value) and "abc" not in str(caught.value)


def test_bad_knobs_are_refused():
    with pytest.raises(ConfigError, match="XIEHE_OFFSITE_BWLIMIT"):
        load({"XIEHE_OFFSITE_BWLIMIT": "fast"})
    with pytest.raises(ConfigError, match="XIEHE_OFFSITE_RETRIES"):
        load({"XIEHE_OFFSITE_RETRIES": "0"})
    assert load({}).remotes == ()
