"""``python -m ocifs``: the same as the ``ocifs`` console script."""

import sys

from ocifs.cli import main

sys.exit(main())
