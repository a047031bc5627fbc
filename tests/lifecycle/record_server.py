"""``python record_server.py RECORDS endpointsec-args...``: run the endpointsec command
line with every decision written to RECORDS as a decision record (JSON lines)."""

from __future__ import annotations

import logging
import sys

from endpointsec.cli import main
from endpointsec.lifecycle.records import DecisionRecordHandler

if __name__ == "__main__":
    log = logging.getLogger("endpointsec.decision")
    log.addHandler(DecisionRecordHandler(sys.argv[1]))
    log.setLevel(logging.DEBUG)
    sys.exit(main(sys.argv[2:]))
