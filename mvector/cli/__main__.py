"""``python -m mvector.cli ...`` is the ``mvector`` command."""

import sys

from mvector.cli import main

if __name__ == "__main__":
    sys.exit(main())
