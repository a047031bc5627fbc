"""RotatingServerContext in-process: when a new set of files is used, and when not.

The handshakes themselves are exercised under real servers in test_rotation.py.
"""

from __future__ import annotations

import logging
import pickle
import re
import ssl
from pathlib import Path

import pytest
from test_rotation import RotationPki, build_rotation_pki, replace_file

from endpointsec.errors import ConfigurationError
from endpointsec.servers.gunicorn import SSLContextHook
from endpointsec.servers.tls import RotatingServerContext
from endpointsec.servers.uvicorn import RotatingSSLContextFactory


@pytest.fixture
def pki(tmp_path: Path) -> RotationPki:
    return build_rotation_pki(tmp_path)


def rotating(pki: RotationPki) -> RotatingServerContext:
    return RotatingServerContext(certfile=pki.certfile, keyfile=pki.keyfile,
                                 client_ca=pki.client_ca, reload_interval=0)


def test_a_change_is_loaded_once_it_held_still(pki: RotationPki) -> None:
    rot = rotating(pki)
    front = rot.context
    assert rot.current is front and rot.generation == 0
    assert rot.check() is False  # nothing changed
    replace_file(pki.certfile, pki.server_certs[1].chain_pem)
    replace_file(pki.keyfile, pki.server_certs[1].key_pem)
    assert rot.check() is False  # changed: wait one step
    assert rot.check() is True
    assert rot.generation == 1
    assert rot.current is not front
    assert rot.context is front  # the server keeps the front context
    assert front.sni_callback is not None
    assert rot.check() is False


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("cert-garbage", "server certificate {certfile}: not a PEM certificate file"),
        ("cert-missing", "server certificate {certfile}: cannot read"),
        ("key-garbage", "server key {keyfile}: cannot load"),
        ("key-mismatch", "server certificate {certfile} and key {keyfile} do not match"),
        ("ca-garbage", "client CA bundle {client_ca}: not a PEM certificate file"),
        ("ca-empty", "client CA bundle {client_ca}: not a PEM certificate file"),
    ],
)
def test_a_bad_set_keeps_the_last_good_context(pki: RotationPki, damage: str, message: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    rot = rotating(pki)
    good = rot.current
    if damage == "cert-garbage":
        pki.certfile.write_bytes(b"-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n")
    elif damage == "cert-missing":
        pki.certfile.unlink()
    elif damage == "key-garbage":
        pki.keyfile.write_bytes(b"not a key")
    elif damage == "key-mismatch":
        pki.keyfile.write_bytes(pki.server_certs[2].key_pem)
    elif damage == "ca-garbage":
        pki.client_ca.write_bytes(b"\x00\x01garbage")
    else:
        pki.client_ca.write_bytes(b"")
    expected = message.format(certfile=pki.certfile, keyfile=pki.keyfile,
                              client_ca=pki.client_ca)
    with caplog.at_level(logging.ERROR, logger="endpointsec.servers"):
        assert rot.check() is False
        assert rot.check() is False
    assert rot.current is good and rot.generation == 0
    assert rot.last_error is not None and expected in rot.last_error
    [record] = [r for r in caplog.records if r.name == "endpointsec.servers"]
    assert record.levelno == logging.ERROR
    assert expected in record.getMessage()
    assert "keeping the last good" in record.getMessage()
    # The same bad version is not retried (nor logged) until a file changes again.
    caplog.clear()
    assert rot.check() is False
    assert caplog.records == []


def test_a_good_set_after_a_bad_one_is_used_and_clears_the_error(pki: RotationPki) -> None:
    rot = rotating(pki)
    pki.keyfile.write_bytes(pki.server_certs[1].key_pem)
    rot.check()
    rot.check()
    assert rot.last_error is not None
    replace_file(pki.certfile, pki.server_certs[1].chain_pem)
    rot.check()
    assert rot.check() is True
    assert rot.last_error is None and rot.generation == 1


def test_bad_files_at_start_name_the_file(pki: RotationPki) -> None:
    pki.client_ca.write_bytes(b"nothing")
    with pytest.raises(ConfigurationError, match=re.escape(f"client CA bundle {pki.client_ca}")):
        rotating(pki)


def test_negative_interval_is_refused(pki: RotationPki) -> None:
    with pytest.raises(ConfigurationError, match=r"server\.reload_interval"):
        RotatingServerContext(certfile=pki.certfile, keyfile=pki.keyfile, reload_interval=-1)


def test_watcher_thread_starts_and_stops(pki: RotationPki) -> None:
    rot = RotatingServerContext(certfile=pki.certfile, keyfile=pki.keyfile,
                                client_ca=pki.client_ca, reload_interval=0.05)
    with rot:
        assert rot.watching
    assert not rot.watching
    assert not rotating(pki).start().watching  # interval 0: no thread


def test_default_build_requires_client_certificates(pki: RotationPki) -> None:
    ctx = rotating(pki).current
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_uvicorn_factory_pickles_and_uses_uvicorns_context(pki: RotationPki) -> None:
    import uvicorn

    factory = RotatingSSLContextFactory(reload_interval=0)
    config = uvicorn.Config(app=None, ssl_certfile=str(pki.certfile),
                            ssl_keyfile=str(pki.keyfile), ssl_ca_certs=str(pki.client_ca),
                            ssl_cert_reqs=ssl.CERT_REQUIRED, ssl_context_factory=factory)
    config.load()
    assert factory.rotating is not None
    assert config.ssl is factory.rotating.context
    assert config.ssl.verify_mode == ssl.CERT_REQUIRED
    copy = pickle.loads(pickle.dumps(factory))
    assert copy.reload_interval == 0 and copy.rotating is None


class _GunicornConf:
    def __init__(self, pki: RotationPki) -> None:
        self.certfile, self.keyfile = str(pki.certfile), str(pki.keyfile)
        self.ca_certs, self.cert_reqs = str(pki.client_ca), ssl.CERT_REQUIRED


def test_gunicorn_hook_builds_once_per_process(pki: RotationPki) -> None:
    from gunicorn.util import get_arity

    hook = SSLContextHook(reload_interval=0)
    assert get_arity(hook) == 2  # gunicorn's validator for the ssl_context setting
    built: list[ssl.SSLContext] = []

    def default_factory() -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.client_ca))
        ctx.load_cert_chain(pki.certfile, pki.keyfile)
        ctx.verify_mode = ssl.CERT_REQUIRED
        built.append(ctx)
        return ctx

    conf = _GunicornConf(pki)
    first = hook(conf, default_factory)
    assert hook(conf, default_factory) is first  # per connection: no new context
    assert built == [first]
    assert hook.rotating is not None
    hook.rotating.pid = -1  # as seen from a forked worker
    assert hook.rotating is None
    second = hook(conf, default_factory)
    assert second is not first and len(built) == 2


def test_encrypted_key_needs_its_password_and_never_prompts(pki: RotationPki) -> None:
    from cryptography.hazmat.primitives import serialization

    encrypted = pki.server_certs[0].key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret"))
    pki.keyfile.write_bytes(encrypted)
    # Without the password: an error naming the key (OpenSSL's terminal prompt would
    # block the server).
    with pytest.raises(ConfigurationError, match=re.escape(f"server key {pki.keyfile}")):
        rotating(pki)
    rot = RotatingServerContext(certfile=pki.certfile, keyfile=pki.keyfile,
                                client_ca=pki.client_ca, reload_interval=0,
                                password="s3cret")
    assert rot.generation == 0 and rot.last_error is None
