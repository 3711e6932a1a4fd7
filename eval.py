"""Root script kept for the README's commands: the same as `mvector eval` (see mvector/cli/evaluate.py)."""

import sys

from mvector.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
