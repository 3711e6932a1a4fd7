"""Root script kept for the README's commands: the same as `mvector create-data` (see mvector/cli/create_data.py)."""

import sys

from mvector.cli.create_data import main

if __name__ == "__main__":
    sys.exit(main())
