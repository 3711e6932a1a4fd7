"""Import a pretrained third-party checkpoint as an mvector model folder (``mvector import``)."""

import sys

from mvector.cli.import_model import main

if __name__ == "__main__":
    sys.exit(main())
