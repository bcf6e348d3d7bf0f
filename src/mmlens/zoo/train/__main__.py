"""``python -m mmlens.zoo.train``: see :mod:`mmlens.zoo.train`."""

import sys

from mmlens.errors import MmlensError
from mmlens.zoo.train import main

try:
    sys.exit(main())
except MmlensError as err:  # bad input: one line, no traceback
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
