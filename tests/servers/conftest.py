"""Session PKI for the real-server tests (keys generated here, in tmp)."""

from __future__ import annotations

import pytest
from servers_support import ServerPki, build_pki


@pytest.fixture(scope="session")
def server_pki(tmp_path_factory: pytest.TempPathFactory) -> ServerPki:
    return build_pki(tmp_path_factory.mktemp("server-pki"))
