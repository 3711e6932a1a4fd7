"""Root script kept for the README's commands: the same as `mvector export` (see mvector/cli/export.py)."""

import sys

from mvector.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
