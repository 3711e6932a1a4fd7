"""Root script kept for the README's commands: the same as `mvector recognize` (see mvector/cli/recognize.py)."""

import sys

from mvector.cli.recognize import main

if __name__ == "__main__":
    sys.exit(main())
