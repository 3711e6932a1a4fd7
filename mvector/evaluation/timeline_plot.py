"""The "who spoke when" picture: one row per speaker, a bar per turn; optionally the reference above it.

With a reference, each hypothesis speaker takes the colour of the reference speaker it is mapped to (the DER
mapping), so confusions stand out as colour changes.

>>> import tempfile, os
>>> from mvector.evaluation.der import Segment
>>> path = plot_timeline([Segment(0, 2, "alice"), Segment(2.5, 4, "bob")], os.path.join(tempfile.mkdtemp(), "t.png"),
...                      reference=[Segment(0, 2.2, "A"), Segment(2.2, 4, "B")], title="demo")
>>> path.suffix, path.stat().st_size > 1000
('.png', True)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

from mvector.data.rttm import Segment

__all__ = ["plot_timeline"]

PathLike = Union[str, os.PathLike]


def _rows(ax, turns: Sequence[Segment], label: str, end: float, colours: dict[str, str]) -> None:
    speakers = list(dict.fromkeys(t.speaker for t in sorted(turns)))
    for row, speaker in enumerate(speakers):
        spans = [(t.start, t.end - t.start) for t in turns if t.speaker == speaker]
        ax.broken_barh(spans, (row - 0.4, 0.8), facecolors=colours[speaker])
    ax.set_yticks(range(len(speakers)))
    ax.set_yticklabels(speakers)
    ax.set_ylim(-0.6, max(len(speakers), 1) - 0.4)
    ax.invert_yaxis()
    ax.set_xlim(0, end)
    ax.set_ylabel(label)
    ax.grid(axis="x", alpha=0.3)


def plot_timeline(
    turns: Sequence[Segment],
    path: PathLike,
    reference: Sequence[Segment] | None = None,
    title: str | None = None,
    duration: float | None = None,
) -> Path:
    """Draw the turns (and the reference, when given, in a panel above) into an image file; return its path.

    The format follows the suffix (``.png``, ``.svg``, ``.pdf``); the file is written to a temporary name and
    moved into place. Uses matplotlib's non-interactive Agg backend.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    turns = [Segment(*t) for t in turns]
    ref = [Segment(*t) for t in reference] if reference is not None else None
    ends = [t.end for t in turns] + [t.end for t in ref or []]
    end = float(duration) if duration is not None else (max(ends) if ends else 1.0)
    panels = [(ref, "reference"), (turns, "hypothesis")] if ref is not None else [(turns, "speaker")]
    # one colour per speaker; a hypothesis speaker mapped to a reference speaker (DER mapping) shares its colour
    order = list(dict.fromkeys(t.speaker for t in sorted(ref if ref is not None else turns)))
    colours = {name: f"C{i % 10}" for i, name in enumerate(order)}
    hyp_colours = dict(colours) if ref is None else {}
    if ref is not None:
        from mvector.evaluation.der import diarization_error

        mapping = diarization_error(ref, turns).mapping
        spare = len(order)
        for name in dict.fromkeys(t.speaker for t in sorted(turns)):
            if name in mapping:
                hyp_colours[name] = colours[mapping[name]]
            else:
                hyp_colours[name] = f"C{spare % 10}"
                spare += 1
    heights = [max(1, len({t.speaker for t in p})) for p, _ in panels]
    fig, axes = plt.subplots(
        len(panels), 1, sharex=True, figsize=(12, 1.0 + 0.45 * sum(heights)), height_ratios=heights, squeeze=False
    )
    try:
        for ax, (items, label) in zip(axes[:, 0], panels):
            _rows(ax, items, label, end, colours if label == "reference" else hyp_colours)
        axes[-1, 0].set_xlabel("time (s)")
        if title:
            axes[0, 0].set_title(title)
        fig.tight_layout()
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp{target.suffix}")
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, target)
    finally:
        plt.close(fig)
    return target
