"""Audio layer: decoding and preprocessing (``mvector.audio.io``), waveform augmentation
(``mvector.audio.augment``). The names of ``mvector.audio.io`` are importable from here.

>>> from mvector.audio import load_audio
>>> callable(load_audio)
True
"""

from mvector.audio.io import *  # noqa: F401,F403
from mvector.audio.io import __all__  # noqa: F401
