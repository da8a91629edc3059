"""``python -m tokentree.cli``: the ``tokentree`` command."""

import sys

from . import main

sys.exit(main())
