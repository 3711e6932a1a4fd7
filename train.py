"""Root script kept for the README's commands: the same as `mvector train` (see mvector/cli/train.py)."""

import sys

from mvector.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
