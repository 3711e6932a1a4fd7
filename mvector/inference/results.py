"""The answer of a verification (:meth:`MVectorPredictor.contrast`): the score, the decision and, with a
calibration, the LLR and probability of "same speaker"; it unpacks as the seed's ``(score, same)`` tuple."""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["ContrastResult"]


class ContrastResult(tuple):
    """The answer of a verification: unpacks as ``(score, same_speaker)`` like the seed's tuple, and also carries the
    calibrated ``llr`` and ``probability`` of "same speaker" at ``prior`` (``None`` without a calibration) and
    the ``threshold`` used with its ``threshold_source`` (a sentence, or a dict).

    >>> r = ContrastResult(0.8, True, llr=2.0, probability=0.88, prior=0.5, threshold=0.6)
    >>> score, same_speaker = r
    >>> score, same_speaker, r.same_speaker, r.llr, r.probability
    (0.8, True, True, 2.0, 0.88)
    >>> r.to_dict()["same_speaker"], r.to_dict()["probability"]
    (True, 0.88)
    """

    def __new__(
        cls,
        score: float,
        same_speaker: bool,
        llr: float | None = None,
        probability: float | None = None,
        prior: float | None = None,
        threshold: float | None = None,
        threshold_source: str | Mapping[str, Any] | None = None,
    ) -> ContrastResult:
        obj = super().__new__(cls, (float(score), bool(same_speaker)))
        obj.llr = None if llr is None else float(llr)
        obj.probability = None if probability is None else float(probability)
        obj.prior = None if prior is None else float(prior)
        obj.threshold = None if threshold is None else float(threshold)
        if threshold_source is not None and not isinstance(threshold_source, str):
            threshold_source = dict(threshold_source)
        obj.threshold_source = threshold_source
        return obj

    @property
    def calibrated(self) -> bool:
        """Whether a calibration produced :attr:`llr` and :attr:`probability`."""
        return self.llr is not None

    @property
    def score(self) -> float:
        """The raw score."""
        return self[0]

    @property
    def same_speaker(self) -> bool:
        """The decision: ``score >= threshold`` (the HTTP API's ``same_speaker``)."""
        return self[1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "score": self.score,
            "same_speaker": self.same_speaker,
            "llr": self.llr,
            "probability": self.probability,
            "prior": self.prior,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
        }

    def __getnewargs__(self):  # copy / pickle of the tuple keep the extras
        extras = (self.llr, self.probability, self.prior, self.threshold, self.threshold_source)
        return (self.score, self.same_speaker, *extras)
