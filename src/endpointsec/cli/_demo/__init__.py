"""The orders example run by ``endpointsec demo``, shipped inside the package.

``app.py``, ``endpointsec.toml`` and ``policy.csv`` are the files of the repository's
``examples/fastapi_app`` (a test keeps them identical), so the demo works from an
installed wheel. The demo executes ``app.py`` by path; nothing imports this package.
"""
