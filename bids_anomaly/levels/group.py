"""Group level: train (``--train``), score who is not scored yet, then compare groups.

Reads OUTPUT_DIR only (plus participants.tsv for the groups), writes ``group_*`` tables and
figures at the root of OUTPUT_DIR and the group HTML report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bids_anomaly.bids.preprocessed import preprocessed_path
from bids_anomaly.errors import MissingInputError
from bids_anomaly.levels import RunContext, require_controls
from bids_anomaly.levels.score import bundle_paths, load_atlases, load_scorers, score_participants
from bids_anomaly.templates import load_template

if TYPE_CHECKING:
    from bids_anomaly.scoring.scorer import BundleScorer

LOGGER = logging.getLogger('bids_anomaly')


def run_group_level(context: RunContext) -> None:
    """Train if asked, score, then write group tables, statistics, embeddings and the report."""
    from bids_anomaly.levels.group_outputs import write_group_outputs

    config = context.config
    template = load_template(config.preprocessing.resolution)
    if config.training.train:
        from bids_anomaly.levels.train import min_controls, train_bundles

        controls = require_controls(context.participants, config, min_controls(config.training))
        train_bundles(config, context.work_dir, controls)
        from bids_anomaly.training.distributed import workers

        if not workers().is_main:  # torchrun's other processes: their part is done
            return
    paths = bundle_paths(config)
    if not paths:
        raise MissingInputError(
            f'no model bundle in {config.output_dir / "models"}: run '
            '`group --train` first or pass --model PATH'
        )
    scorers = load_scorers(paths, template, config.execution.device, config.preprocessing)
    ready = [
        p
        for p in context.participants
        if preprocessed_path(config.output_dir, p, 'T1w', template).is_file()
    ]
    if not ready:
        raise MissingInputError(
            f'no participant has preprocessed data in {config.output_dir} '
            f'at {template.resolution:g} mm: run the participant level first'
        )
    atlases = load_atlases(config, template)
    writer = context.writer
    score_participants(writer, config, ready, scorers, atlases, template, skip_existing=True)
    used = used_for_fitting(scorers, config.output_dir)
    write_group_outputs(writer, config, ready, scorers, atlases, template, used)


def used_for_fitting(scorers: Sequence[BundleScorer], output_dir: Path) -> set[str]:
    """Participants that trained or calibrated a bundle of this dataset: left out of statistics.

    Bundles from elsewhere (``--model`` outside OUTPUT_DIR/models) were fitted on another
    dataset, whose participant labels say nothing about this one.
    """
    names: set[str] = set()
    local = (output_dir / 'models').resolve()
    for scorer in scorers:
        if local not in scorer.path.resolve().parents:
            continue
        names |= set(scorer.card.training_participants)
        names |= set(scorer.card.calibration_participants)
    return names
