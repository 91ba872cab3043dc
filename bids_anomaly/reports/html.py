"""HTML reports readable offline: figures embedded as base64 PNG or SVG, viewers linked.

A report is a list of :class:`Section`; each holds text, figures, interactive viewers and tables.
A viewer is a page of its own in OUTPUT_DIR (:mod:`bids_anomaly.reports.viewers`), loaded in an
iframe when the reader opens it. The page layout is a jinja2 template shipped with the package
(``templates/report.html``).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bids_anomaly import __version__
from bids_anomaly.io import write_text

#: Image files a report can embed, by suffix, with their MIME type.
IMAGE_TYPES = {'.png': 'image/png', '.svg': 'image/svg+xml'}


@dataclass
class Section:
    """One titled part of a report."""

    title: str
    text: str = ''
    figures: list[tuple[str, str, str]] = field(default_factory=list)  # caption, MIME, base64
    viewers: list[tuple[str, str, int, int]] = field(default_factory=list)  # caption, src, size
    tables: list[tuple[str, str]] = field(default_factory=list)

    def add_figure(self, fig, caption: str) -> None:
        """Embed a matplotlib figure (then closed, so long reports do not pile up memory)."""
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        fig.savefig(buffer, format='png', dpi=90, bbox_inches='tight')
        plt.close(fig)
        self.figures.append((caption, 'image/png', _base64(buffer.getvalue())))

    def add_image_file(self, path: Path, caption: str) -> None:
        """Embed an existing PNG or SVG file (e.g. a preprocessing QC figure) by value."""
        path = Path(path)
        mime = IMAGE_TYPES.get(path.suffix.lower())
        if mime is None:
            raise ValueError(f'{path}: only {", ".join(IMAGE_TYPES)} images can be embedded')
        self.figures.append((caption, mime, _base64(path.read_bytes())))

    def add_viewer(self, src: str, caption: str, width: int, height: int) -> None:
        """Link a viewer page (``src`` relative to the report), shown in a width x height frame."""
        self.viewers.append((caption, src, width, height))

    def add_table(self, table: pd.DataFrame, caption: str, max_rows: int = 30) -> None:
        shown = table.head(max_rows)
        html = shown.to_html(
            index=False, float_format=lambda v: f'{v:.4g}', na_rep='n/a', border=0, classes='table'
        )
        if len(table) > max_rows:
            caption += f' (first {max_rows} of {len(table)} rows; full table in the TSV)'
        self.tables.append((caption, html))


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode('ascii')


def render_report(path: Path, title: str, sections: list[Section], subtitle: str = '') -> Path:
    """Write the report atomically and return its path."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    environment = Environment(
        loader=PackageLoader('bids_anomaly', 'reports/templates'),
        autoescape=select_autoescape(['html']),
    )
    page = environment.get_template('report.html').render(
        title=title, subtitle=subtitle, sections=sections, version=__version__
    )
    return write_text(path, page)
