"""Server add-ons: pass the client certificate to the app, rotate server certificates.

* :mod:`endpointsec.servers.uvicorn`: ``HttpToolsProtocol`` and ``H11Protocol`` for
  ``uvicorn --http ...`` (needs the ``uvicorn`` extra), and
  ``RotatingSSLContextFactory`` for ``uvicorn.Config(ssl_context_factory=...)``;
* :mod:`endpointsec.servers.gunicorn`: the ``ssl_context`` server hook;
* :mod:`endpointsec.servers.tls`: ``RotatingServerContext``, the server-independent part
  (new handshakes follow the certificate, key and client CA files).

Nothing is imported here, so that ``endpointsec`` does not depend on any server.
"""
