"""Markdown table of the backbones' parameter counts at their default sizes (ASP pooling, embd_dim 192).

Run ``python -m mvector.models.param_table``; the README carries its output.

>>> row = table_rows(feature_sizes=(80,), names=["TDNN"])[0]
>>> row[0], row[2]
('TDNN', '5.22 M')
"""

from __future__ import annotations

import inspect
from typing import Sequence

from mvector.models import BACKBONES, build_backbone

__all__ = ["count_parameters", "default_widths", "table_rows", "markdown_table", "main"]

_WIDTH_KEYS = (
    "channels",
    "stats_channels",
    "layers",
    "scale",
    "base_width",
    "expansion",
    "se_channels",
    "se_reduction",
    "fcm_channels",
    "init_channels",
    "growth_rate",
    "bn_size",
    "num_layers",
)


def count_parameters(name: str, input_size: int, **model_conf: object) -> int:
    """Number of parameters of backbone ``name`` (pooling and embedding layer included).

    >>> count_parameters("EcapaTdnn", 80)
    6194432
    """
    return sum(p.numel() for p in build_backbone(name, input_size, **model_conf).parameters())


def default_widths(name: str) -> str:
    """The width-related constructor defaults of backbone ``name``, as ``key=value`` text.

    >>> default_widths("EcapaTdnn")
    'channels=512, scale=8, se_channels=128'
    """
    params = inspect.signature(BACKBONES[name].__init__).parameters
    parts = []
    for key in _WIDTH_KEYS:
        if key in params:
            value = params[key].default
            parts.append(f"{key}={list(value) if isinstance(value, tuple) else value}")
    return ", ".join(parts)


def table_rows(feature_sizes: Sequence[int] = (64, 80), names: Sequence[str] | None = None) -> list[list[str]]:
    """One row per backbone: name, default widths, then parameters (millions) per feature size."""
    rows = []
    for name in names or list(BACKBONES):
        counts = [f"{count_parameters(name, f) / 1e6:.2f} M" for f in feature_sizes]
        rows.append([name, default_widths(name), *counts])
    return rows


def markdown_table(feature_sizes: Sequence[int] = (64, 80)) -> str:
    """The whole markdown table (header, separator, rows)."""
    header = ["Backbone", "Default widths", *[f"Params ({f} features)" for f in feature_sizes]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(feature_sizes)]
    return "\n".join(lines)


def main() -> None:
    """Print the table for 64 and 80 input features (ASP pooling, embd_dim 192)."""
    print(markdown_table())
    print()
    print("Counts include the pooling (ASP, attention 128, global context) and the 192-dim embedding layer;")
    print("CAMPPlus uses its default statistics pooling (TSP, as released by 3D-Speaker).")


if __name__ == "__main__":
    main()
