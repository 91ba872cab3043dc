"""Figures of the reports: latent maps and their metrics, regional heatmap, group statistics,
score overlays.

Every function takes tables or images, builds a :class:`matplotlib.figure.Figure` without pyplot
(no global figure registry, no backend switch, nothing to close) and returns it; given
``output_file`` it also saves it, atomically, so a report never links a half-written image.
matplotlib is imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import nibabel as nib
    from matplotlib.figure import Figure

MAX_LEGEND_ENTRIES = 20
MAX_ROW_LABELS = 60


def save_figure(fig: Figure, output_file: Path | str) -> None:
    """Save through a temporary file in the same folder, then rename it into place."""
    path = Path(output_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name rather than mkstemp, whose 0600 mode would hide figures from other users
    temporary = path.with_name(f'.{path.stem}.{uuid.uuid4().hex}{path.suffix}')
    try:
        fig.savefig(temporary, format=path.suffix.lstrip('.') or 'png', bbox_inches='tight')
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _finish(fig: Figure, output_file: Path | str | None) -> Figure:
    if output_file is not None:
        save_figure(fig, output_file)
    return fig


def plot_embedding(
    coords: pd.DataFrame,
    *,
    colour: str = 'group',
    title: str | None = None,
    output_file: Path | str | None = None,
) -> Figure:
    """Scatter the 2D latent maps of :func:`~bids_anomaly.analysis.latent.embed`, one panel each.

    Parameters
    ----------
    coords : DataFrame
        Columns ``x``, ``y``, ``method`` and ``colour``; one panel per method, in order.
    colour : str, default='group'
        Column that colours the points: categories get a legend (up to
        :data:`MAX_LEGEND_ENTRIES`), numbers (e.g. ``score``) a colour bar.
    title : str, optional
        Figure title.
    output_file : path, optional
        Where to save the figure; the format follows the suffix.
    """
    from matplotlib.figure import Figure

    methods = list(dict.fromkeys(coords['method']))
    n_columns = min(len(methods), 4)
    n_rows = -(-len(methods) // n_columns)
    fig = Figure(figsize=(4 * n_columns, 4 * n_rows), layout='constrained')
    axes = fig.subplots(n_rows, n_columns, squeeze=False).ravel()
    numeric = pd.api.types.is_numeric_dtype(coords[colour])
    categories = [] if numeric else list(dict.fromkeys(coords[colour]))
    palette = 'tab10' if len(categories) <= 10 else 'tab20'
    for ax, method in zip(axes, methods, strict=False):
        panel = coords[coords['method'] == method]
        if numeric:
            points = ax.scatter(
                panel['x'], panel['y'], c=panel[colour], s=4, cmap='viridis', rasterized=True
            )
        else:
            codes = pd.Categorical(panel[colour], categories=categories).codes
            points = ax.scatter(
                panel['x'],
                panel['y'],
                c=codes % 20,
                s=4,
                cmap=palette,
                vmin=0,
                vmax=9 if palette == 'tab10' else 19,
                rasterized=True,
            )
        ax.set(title=method, xticks=[], yticks=[])
    for ax in axes[len(methods) :]:
        ax.set_axis_off()
    if numeric:
        fig.colorbar(points, ax=axes[: len(methods)].tolist(), label=colour, shrink=0.8)
    elif len(categories) <= MAX_LEGEND_ENTRIES:
        handles = [
            axes[0].scatter([], [], s=16, color=points.cmap(points.norm(k % 20)))
            for k in range(len(categories))
        ]
        fig.legend(handles, [str(c) for c in categories], title=colour, loc='outside right')
    if title:
        fig.suptitle(title)
    return _finish(fig, output_file)


def plot_regional_heatmap(
    table: pd.DataFrame,
    *,
    group_column: str = 'group',
    control_label: str = 'control',
    regions: list[str] | None = None,
    title: str | None = None,
    output_file: Path | str | None = None,
) -> Figure:
    """Heatmap of % abnormal voxels, participants (controls first) by regions ("Figure 1").

    Parameters
    ----------
    table : DataFrame
        One row per participant, indexed by participant label, with a group column and one
        column per region (the input of
        :func:`~bids_anomaly.analysis.group.group_statistics`).
    group_column, control_label : str
        Which rows are controls; they come first, then each other group, separated by lines.
    regions : list of str, optional
        Columns to show; defaults to every numeric column.
    title : str, optional
        Figure title.
    output_file : path, optional
        Where to save the figure.
    """
    from matplotlib.figure import Figure

    if regions is None:
        regions = list(table.select_dtypes('number').columns)
    groups = table[group_column].astype(str)
    order = sorted(groups.unique(), key=lambda group: (group != control_label, group))
    rows = table.iloc[np.argsort(groups.map(order.index).to_numpy(), kind='stable')]
    values = rows[regions].to_numpy(dtype=float)
    fig = Figure(figsize=(2 + 0.35 * len(regions), 2 + 0.12 * len(rows)), layout='constrained')
    ax = fig.subplots()
    image = ax.imshow(
        np.ma.masked_invalid(values), aspect='auto', cmap='magma', interpolation='nearest'
    )
    fig.colorbar(image, ax=ax, label='% abnormal voxels')
    ax.set_xticks(range(len(regions)), regions, rotation=60, ha='right')
    if len(rows) <= MAX_ROW_LABELS:
        ax.set_yticks(range(len(rows)), [str(label) for label in rows.index], fontsize=7)
    else:
        ax.set_yticks([])
    sizes = rows[group_column].astype(str).value_counts().reindex(order).to_numpy()
    for edge in np.cumsum(sizes)[:-1]:
        ax.axhline(edge - 0.5, color='white', linewidth=2)
    for group, start, size in zip(order, np.cumsum(sizes) - sizes, sizes, strict=True):
        ax.annotate(
            f'{group} (n={size})',
            xy=(1.0, start + size / 2 - 0.5),
            xycoords=('axes fraction', 'data'),
            xytext=(4, 0),
            textcoords='offset points',
            va='center',
            fontsize=8,
        )  # horizontal: rotated labels of small groups are longer than their band and overlap
    ax.set_ylabel('participants')
    if title:
        ax.set_title(title)
    return _finish(fig, output_file)


def plot_group_statistics(
    stats: pd.DataFrame, *, title: str | None = None, output_file: Path | str | None = None
) -> Figure:
    """Bars of per-region AUC and best g-mean, one panel per model.

    Parameters
    ----------
    stats : DataFrame
        Output of :func:`~bids_anomaly.analysis.group.group_statistics`, optionally with a
        ``model`` column (one panel per model, same region order).
    title : str, optional
        Figure title.
    output_file : path, optional
        Where to save the figure.
    """
    from matplotlib.figure import Figure

    stats = stats if 'model' in stats.columns else stats.assign(model='')
    models = list(dict.fromkeys(stats['model']))
    regions = list(dict.fromkeys(stats['region']))
    fig = Figure(figsize=(2 + 0.5 * len(regions), 2.8 * len(models)), layout='constrained')
    axes = fig.subplots(len(models), 1, squeeze=False, sharex=True).ravel()
    positions = np.arange(len(regions))
    for ax, model in zip(axes, models, strict=True):
        panel = stats[stats['model'] == model].set_index('region').reindex(regions)
        ax.bar(positions - 0.2, panel['auc'], width=0.4, label='ROC AUC', color='tab:blue')
        ax.bar(positions + 0.2, panel['gmean'], width=0.4, label='best g-mean', color='tab:orange')
        ax.axhline(0.5, color='grey', linestyle='--', linewidth=1)
        ax.set(ylim=(0, 1), ylabel=model or None)
    axes[0].legend(loc='lower right', fontsize=8)
    axes[-1].set_xticks(positions, regions, rotation=60, ha='right')
    if title:
        fig.suptitle(title)
    return _finish(fig, output_file)


def plot_latent_metrics(
    metrics: pd.DataFrame, *, title: str | None = None, output_file: Path | str | None = None
) -> Figure:
    """Every model side by side: one panel per metric, a group of bars per method.

    So that SAE vs AE, patch vs slice or two losses compare at a glance.

    Parameters
    ----------
    metrics : DataFrame
        Columns ``model``, ``method``, ``metric``, ``value`` (the group level's
        ``group_latent_metrics.tsv``); NaN values leave a gap.
    title : str, optional
        Figure title.
    output_file : path, optional
        Where to save the figure.
    """
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(metrics['metric']))
    methods = list(dict.fromkeys(metrics['method']))
    models = list(dict.fromkeys(metrics['model']))
    table = metrics.pivot_table(
        index=['metric', 'method'], columns='model', values='value', dropna=False
    )
    fig = Figure(
        figsize=(2 + 1.1 * len(methods) * max(1, len(models) / 3), 2.4 * len(names)),
        layout='constrained',
    )
    axes = fig.subplots(len(names), 1, squeeze=False, sharex=True).ravel()
    width = 0.8 / len(models)
    positions = np.arange(len(methods))
    for ax, name in zip(axes, names, strict=True):
        for index, model in enumerate(models):
            heights = [table[model].get((name, method), np.nan) for method in methods]
            ax.bar(
                positions + (index - (len(models) - 1) / 2) * width,
                heights,
                width=width,
                label=model,
                color=f'C{index}',
            )
        ax.axhline(0, color='grey', linewidth=0.8)
        ax.set(ylabel=name.replace('_', ' '))
    axes[0].legend(
        fontsize=8, ncols=min(len(models), 4), loc='lower left', bbox_to_anchor=(0, 1.02)
    )
    axes[-1].set_xticks(positions, methods)
    if title:
        fig.suptitle(title)
    return _finish(fig, output_file)


def plot_score_overlay(
    score_img: nib.Nifti1Image,
    anat_img: nib.Nifti1Image,
    *,
    threshold: float | None = None,
    cut_coords: tuple[float, float, float] | None = None,
    title: str | None = None,
    output_file: Path | str | None = None,
) -> Figure:
    """Orthogonal slices of an anomaly score map over a T1w image.

    Parameters
    ----------
    score_img, anat_img : Nifti1Image
        Score map and background, in the same space.
    threshold : float, optional
        Scores below it are transparent (e.g. the calibrated abnormality threshold).
    cut_coords : tuple of 3 floats, optional
        World coordinates of the cuts; by default nilearn centres them on the strongest scores.
    title : str, optional
        Figure title.
    output_file : path, optional
        Where to save the figure.
    """
    from matplotlib.figure import Figure
    from nilearn.plotting import plot_stat_map

    fig = Figure(figsize=(10, 3.5))
    plot_stat_map(
        score_img,
        bg_img=anat_img,
        display_mode='ortho',
        threshold=threshold,
        cut_coords=cut_coords,
        title=title,
        figure=fig,
        cmap='hot',
        draw_cross=False,
        black_bg=True,
    )
    return _finish(fig, output_file)
