"""Inference layer: backends behind one embedder interface, the embedding loop, the predictor, the speaker database."""
