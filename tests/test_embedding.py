"""The embedding loop (mvector.embedding): inputs too short for the featurizer are named in the caller's order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvector.errors import AudioError


def test_a_short_input_is_named_in_the_callers_order(tmp_path):
    from mvector.demo import tiny_checkpoint
    from mvector.embedding import embed_waveforms
    from mvector.embedding.backends import open_backend

    embedder = open_backend(tiny_checkpoint(tmp_path))
    waves = [np.full(n, 0.1, "float32") for n in (16000, 8000, 100, 12000)]
    with pytest.raises(AudioError, match=r"input 2 \(c\.wav\) is 100 samples"):
        embed_waveforms(embedder, waves, batch_size=4, names=["a.wav", "b.wav", "c.wav", "d.wav"])
    with pytest.raises(AudioError, match=r"input 2 is 100 samples"):
        embed_waveforms(embedder, waves, batch_size=4)


def test_featurizer_batch_positions_are_mapped_back():
    from mvector.embedding.loop import embed_batches

    def embedder(waves, lengths):
        raise AudioError("Fbank featurizer: clip(s) at batch index [1] are shorter than one analysis window")

    with pytest.raises(AudioError, match=r"input 7 \(x\.wav\) \(in the order given\)"):
        names = ["?"] * 7 + ["x.wav"]
        embed_batches(embedder, [([3, 7], torch.zeros(2, 10), torch.tensor([10, 5]))], count=8, names=names)
