"""Figures to self-contained ``<img>`` tags (PNG, base64 data URIs)."""

from __future__ import annotations

import base64
import io
from typing import Any


def figure_to_data_uri(figure: Any, dpi: int = 90) -> str:
    """Render a matplotlib Figure to a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_tag(figure: Any, alt: str, dpi: int = 90) -> str:
    from html import escape

    return f'<img src="{figure_to_data_uri(figure, dpi)}" alt="{escape(alt)}">'
