"""Server add-ons that make a server pass the client certificate to the app.

* :mod:`endpointsec.servers.uvicorn`: ``HttpToolsProtocol`` and ``H11Protocol`` for
  ``uvicorn --http ...`` (needs the ``uvicorn`` extra).

Nothing is imported here, so that ``endpointsec`` does not depend on any server.
"""
