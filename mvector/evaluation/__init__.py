"""Evaluation layer: embed a list, score trials or all pairs, metrics, calibration, diarization error rate."""
