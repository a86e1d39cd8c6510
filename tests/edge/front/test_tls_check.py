"""`edgeshield check` on a fleet's TLS files: what is refused, what is warned about."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from cli.main import main
from tests.support.tls_fleet import TlsFiles, tls_fleet_toml


def write_fleet(tmp_path: Path, files: TlsFiles, **kwargs: bool) -> Path:
    text, _ = tls_fleet_toml(tmp_path, files, "http://127.0.0.1:9", **kwargs)
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def test_valid_tls_files_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_fleet(tmp_path, TlsFiles(tmp_path / "tls"), shield=True, node_ca=True)
    assert main(["check", "--config", str(path)]) == 0
    assert ": ok (" in capsys.readouterr().out


def test_a_key_of_another_certificate_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = TlsFiles(tmp_path / "tls")
    path = write_fleet(tmp_path, files)
    other = files.issue("other", "www.beta.test")
    other.key.replace(files.root / "beta.key")
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "[[services]] ('beta') key 'tls_cert'" in err
    assert "is not the key of the certificate" in err


def test_an_expired_certificate_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = TlsFiles(tmp_path / "tls")
    path = write_fleet(tmp_path, files)
    yesterday = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    files.issue("beta", "www.beta.test", not_after=yesterday)
    assert main(["check", "--config", str(path)]) == 2
    assert "('beta') key 'tls_cert': the certificate expired on" in capsys.readouterr().err


def test_a_certificate_expiring_soon_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = TlsFiles(tmp_path / "tls")
    path = write_fleet(tmp_path, files)
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3)
    files.issue("beta", "www.beta.test", not_after=soon)
    assert main(["check", "--config", str(path)]) == 0
    assert "warning:" in capsys.readouterr().err


def test_a_host_the_certificate_does_not_cover_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = TlsFiles(tmp_path / "tls")
    path = write_fleet(tmp_path, files)
    files.issue("alpha", "www.alpha.test")
    assert main(["check", "--config", str(path)]) == 2
    assert "does not cover the host 'a.img.alpha.test'" in capsys.readouterr().err


def test_a_missing_or_garbled_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = TlsFiles(tmp_path / "tls")
    path = write_fleet(tmp_path, files, shield=True, node_ca=True)
    (files.root / "alpha.crt").write_text("garbage")
    files.ca_path.unlink()
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is not a PEM certificate" in err
    assert "[security] key 'node_ca': cannot read the CA bundle" in err


def test_unverified_https_origins_are_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = TlsFiles(tmp_path / "tls")
    path = write_fleet(tmp_path, files)
    text = path.read_text().replace(
        'origins = ["http://127.0.0.1:9"]',
        'origins = ["https://127.0.0.1:9"]\norigin_tls_verify = false',
        1,
    )
    path.write_text(text)
    assert main(["check", "--config", str(path)]) == 0
    assert "key 'origin_tls_verify': https origins are not verified" in capsys.readouterr().err


def test_node_ca_needs_every_shield_on_tls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = TlsFiles(tmp_path / "tls")
    path = write_fleet(tmp_path, files, shield=True, node_ca=True)
    text = "\n".join(
        line
        for line in path.read_text().splitlines()
        if not line.startswith("tls_cert = ") or "shield1" not in line
    )
    text = "\n".join(line for line in text.splitlines() if "shield1.key" not in line)
    path.write_text(text)
    assert main(["check", "--config", str(path)]) == 2
    assert "[[shields]] ('shield1') key 'tls_listen'" in capsys.readouterr().err
