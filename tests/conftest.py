"""Shared test settings: small thread counts keep the suite predictable on 2-core machines."""

import os

import torch

# The reference generator needs librosa / kaldi-native-fbank, which are not test dependencies.
collect_ignore = ["make_feature_refs.py"]

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(min(2, os.cpu_count() or 1))
