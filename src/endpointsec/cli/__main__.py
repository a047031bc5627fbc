import sys

from endpointsec.cli import main

sys.exit(main())
