"""Old import path, kept for one release: an alias of the module named below."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("mvector.inference.predictor")
