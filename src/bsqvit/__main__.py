"""``python -m bsqvit``: the same as the ``bsqvit`` console script."""

import sys

from .cli import main

sys.exit(main())
