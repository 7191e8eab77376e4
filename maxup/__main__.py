"""``python -m maxup`` is the ``maxup`` command."""

import sys

from maxup.cli import main

sys.exit(main())
