"""Policy coverage for a pytest run (``--endpointsec-coverage``).

Registered by the endpointsec pytest plugin when coverage is asked for. Every decision
a gatekeeper makes during the run (test clients, the offline gatekeeper, suites,
``endpointsec.testing.evaluate``) is logged on ``endpointsec.decision``; this plugin
listens there, maps each decision's rule to its policy line, and reports at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from endpointsec.lifecycle.coverage import Coverage

__all__ = ["PolicyCoveragePlugin"]

_LOGGER = "endpointsec.decision"


class _Collector(logging.Handler):
    def __init__(self, coverage: Coverage) -> None:
        super().__init__(level=logging.DEBUG)
        self.coverage = coverage

    def emit(self, record: logging.LogRecord) -> None:
        decision = getattr(record, "endpointsec_decision", None)
        if decision is not None:
            self.coverage.add(getattr(decision, "matched_rule", None))


class PolicyCoveragePlugin:
    """Collects the deciding rules of a test session and reports the policy coverage."""

    def __init__(self, policies: Sequence[Path], minimum: float | None) -> None:
        self.coverage = Coverage(policies)
        self.minimum = minimum
        self._handler = _Collector(self.coverage)
        self._logger = logging.getLogger(_LOGGER)
        self._level = self._logger.level
        self.failed = False

    def start(self) -> None:
        """Listen to the decision log (allowed requests are logged at DEBUG)."""
        self._logger.addHandler(self._handler)
        if self._logger.getEffectiveLevel() > logging.DEBUG:
            self._logger.setLevel(logging.DEBUG)

    def stop(self) -> None:
        """Stop listening and restore the logger's level (idempotent)."""
        if self._handler in self._logger.handlers:
            self._logger.removeHandler(self._handler)
            self._logger.setLevel(self._level)

    def pytest_unconfigure(self) -> None:
        self.stop()

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.stop()
        if self.minimum is not None and self.coverage.percent < self.minimum:
            self.failed = True
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        tr.write_sep("-", "endpointsec policy coverage")
        tr.write_line(self.coverage.render(what="decided at least one request"))
        if self.failed:
            tr.write_line(f"FAIL: policy coverage {self.coverage.percent:.1f}% is under "
                          f"the required {self.minimum:g}%", red=True)
