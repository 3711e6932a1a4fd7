"""Root script kept for the README's commands: the same as `mvector contrast` (see mvector/cli/contrast.py)."""

import sys

from mvector.cli.contrast import main

if __name__ == "__main__":
    sys.exit(main())
