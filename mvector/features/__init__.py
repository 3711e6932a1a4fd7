"""Feature layer: featurizers (Spectrogram, MelSpectrogram, MFCC, Kaldi Fbank), CMVN and SpecAugment.

The names of ``mvector.features.featurizers`` are importable from here; the signal-processing kernels live in
``mvector.features.dsp`` and SpecAugment in ``mvector.features.specaugment``.

>>> from mvector.features import build_featurizer
>>> build_featurizer("Fbank", {"num_mel_bins": 40}).feature_dim
40
"""

from mvector.features.featurizers import *  # noqa: F401,F403
from mvector.features.featurizers import __all__  # noqa: F401
