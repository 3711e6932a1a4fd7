"""The embedding layer: inference backends behind one interface (:mod:`mvector.embedding.backends`) and the one
embedding loop (:mod:`mvector.embedding.loop`, whose names are importable from here).

>>> from mvector.embedding import embed_waveforms, length_batches
>>> length_batches([3, 1, 2], 2)
[[0, 2], [1]]
"""

from mvector.embedding.loop import embed_batches, embed_waveforms, length_batches, pad_waveforms, run_embedder

__all__ = ["embed_batches", "embed_waveforms", "length_batches", "pad_waveforms", "run_embedder"]
