"""Interactive map viewers: nilearn's ``view_img``, one self-contained page per map.

A page holds the background and the map as PNG sprites plus nilearn's JavaScript (about 0.6 MB
on the 2 mm grid, 1.2 MB on the 1.5 mm grid), so a report does not embed it: it links it in an
iframe that loads only when the reader opens it (see ``templates/report.html``), and the report
keeps the size it had with static figures. The page works offline: nilearn's page links its icon
from the web, which is replaced by an empty inline one.

What the viewer shows (nilearn 0.14): three orthogonal slices that follow a click or a drag, the
world coordinates of the cross, a colour bar and an opacity slider. It does not show the value
or the atlas region under the cursor: nilearn turns the value readout of its viewer
(brainsprite) off, and it has no atlas lookup; the report's regional tables give both per region.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import nibabel as nib

#: nilearn's page links a favicon on the web; browsing a report must not touch the network.
_WEB_ICON = re.compile(r'<link\s+rel="icon"[^>]*>')
#: Room around the viewer inside its iframe: the opacity slider and the page margins (pixels).
_MARGIN = (40, 20)


@dataclass(frozen=True)
class ViewerPage:
    """The HTML of a viewer page and the iframe size that shows it whole."""

    html: str
    width: int
    height: int


def viewer_page(
    img: nib.Nifti1Image,
    background: nib.Nifti1Image,
    *,
    threshold: float,
    title: str,
    vmin: float | None = None,
    vmax: float | None = None,
) -> ViewerPage:
    """A page showing ``img`` over ``background``; values below ``threshold`` are transparent.

    The colour bar runs from ``vmin`` (default 0) to ``vmax`` (default the maximum).
    """
    from nilearn.plotting import view_img

    view = view_img(
        img,
        bg_img=background,
        threshold=threshold,
        cmap='hot',
        symmetric_cmap=False,
        vmin=vmin,
        vmax=vmax,
        black_bg=True,
        title=title,
        resampling_interpolation='nearest',  # both images are on the template grid
    )
    html = _WEB_ICON.sub('<link rel="icon" href="data:,">', view.get_standalone())
    return ViewerPage(html, int(view.width) + _MARGIN[0], int(view.height) + _MARGIN[1])
