"""Workflow construction for every option (cheap: graphs only, nothing runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bids_anomaly.bids.layout import DwiRun, Participant
from bids_anomaly.preprocessing.anat import ANAT_OUTPUTS, init_anat_wf
from bids_anomaly.preprocessing.base import init_participant_wf, participant_wf_name
from bids_anomaly.preprocessing.dwi import DWI_OUTPUTS, init_dwi_wf
from bids_anomaly.preprocessing.precomputed import Precomputed


def edges(workflow) -> set[tuple[str, str, str, str]]:
    """``(source, output, destination, input)`` of every connection, with full node names."""
    graph = workflow._create_flat_graph()
    return {
        (u.fullname, out, v.fullname, inp)
        for u, v, data in graph.edges(data=True)
        for out, inp in data['connect']
    }


def node_names(workflow) -> set[str]:
    return {node.fullname for node in workflow._create_flat_graph().nodes}


@pytest.mark.parametrize('registration', ['affine', 'syn'])
@pytest.mark.parametrize('intensity_norm', ['quantile', 'quantile-unclipped', 'zscore'])
def test_anat_wf_graph(registration, intensity_norm):
    wf = init_anat_wf(
        resolution=1.5,
        registration=registration,
        intensity_norm=intensity_norm,
        omp_nthreads=3,
        seed=7,
    )
    assert wf.name == 'anat_wf'
    assert {n.split('.', 1)[1] for n in node_names(wf)} == {
        'inputnode',
        'outputnode',
        'template',
        'validate',
        'n4',
        'brain_mask',
        'register',
        't1w_std',
        'mask_std',
        'normalise',
        'qc_metrics',
        'qc_figure',
    }
    register = wf.get_node('register')
    assert register.inputs.kind == registration and register.inputs.seed == 7
    assert register.inputs.grid_mm == 2.0
    assert register.inputs.num_threads == 3 and register.n_procs == 3
    assert wf.get_node('normalise').inputs.method == intensity_norm
    assert wf.get_node('template').inputs.resolution == 1.5
    links = edges(wf)
    for link in [
        ('validate', 'out_file', 'n4', 'in_file'),
        ('n4', 'out_file', 'register', 'moving'),
        ('brain_mask', 'out_mask', 'register', 'moving_mask'),
        ('template', 't1w', 'register', 'fixed'),
        ('template', 'mask', 'register', 'fixed_mask'),
        ('register', 'forward_transform', 't1w_std', 'transforms'),
        ('register', 'forward_transform', 'mask_std', 'transforms'),
        ('t1w_std', 'out_file', 'normalise', 'in_file'),
        ('mask_std', 'out_file', 'normalise', 'mask_file'),
        ('normalise', 'out_file', 'qc_metrics', 'in_file'),
        ('register', 'inverse_transform', 'outputnode', 'std2t1w_xfm'),
        ('brain_mask', 'skull_stripped', 'outputnode', 'skull_stripped'),
    ]:
        assert tuple(f'anat_wf.{x}' if i in (0, 2) else x for i, x in enumerate(link)) in links
    connected = {inp for _, _, dst, inp in links if dst == 'anat_wf.outputnode'}
    assert connected == set(ANAT_OUTPUTS)


def test_anat_wf_precomputed_skips_registration():
    wf = init_anat_wf(resolution=2, precomputed=True)
    names = {n.split('.', 1)[1] for n in node_names(wf)}
    assert not names & {'validate', 'n4', 'brain_mask', 'register'}
    links = edges(wf)
    assert ('anat_wf.inputnode', 'std_t1w', 'anat_wf.t1w_std', 'in_file') in links
    assert ('anat_wf.inputnode', 'std_mask', 'anat_wf.mask_std', 'in_file') in links
    assert ('anat_wf.inputnode', 't1w2std_xfm', 'anat_wf.outputnode', 't1w2std_xfm') in links
    assert wf.get_node('mask_std').inputs.interpolation == 'genericLabel'


@pytest.mark.parametrize(
    'kwargs, message',
    [
        ({'resolution': 3}, 'resolution 3 mm'),
        ({'resolution': 2, 'registration': 'bspline'}, 'unknown registration'),
    ],
)
def test_anat_wf_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        init_anat_wf(**kwargs)


@pytest.mark.parametrize('intensity_norm', ['quantile', 'quantile-unclipped', 'zscore'])
def test_dwi_wf_graph(intensity_norm):
    wf = init_dwi_wf(intensity_norm=intensity_norm, omp_nthreads=2, quick=True)
    assert wf.get_node('b0_reg').inputs.kind == 'rigid'
    assert wf.get_node('b0_reg').inputs.quick
    assert wf.get_node('tensor_fit').n_procs == 2
    for name in ('fa_norm', 'md_norm'):
        assert wf.get_node(name).inputs.method == intensity_norm
    links = edges(wf)
    for link in [
        ('validate_dwi', 'out_bval', 'tensor_fit', 'in_bval'),
        ('dwi_reference', 'out_mask', 'tensor_fit', 'mask_file'),
        ('dwi_reference', 'out_b0', 'b0_reg', 'moving'),
        ('inputnode', 't1w', 'b0_reg', 'fixed'),
        ('inputnode', 't1w2std_xfm', 'merge_xfms', 'in1'),
        ('b0_reg', 'forward_transform', 'merge_xfms', 'in2'),
        ('merge_xfms', 'out', 'fa_std', 'transforms'),
        ('merge_xfms', 'out', 'md_std', 'transforms'),
        ('inputnode', 'std_mask', 'fa_norm', 'mask_file'),
        ('fa_norm', 'out_file', 'qc_figure', 'in_file'),
    ]:
        assert tuple(f'dwi_wf.{x}' if i in (0, 2) else x for i, x in enumerate(link)) in links
    assert {inp for _, _, dst, inp in links if dst == 'dwi_wf.outputnode'} == set(DWI_OUTPUTS)


def participant(tmp_path: Path, *, dwi: bool, session: str | None = None) -> Participant:
    run = DwiRun(tmp_path / 'dwi.nii.gz', tmp_path / 'dwi.bval', tmp_path / 'dwi.bvec')
    return Participant(
        '01', session, 'control', True, tmp_path / 'T1w.nii.gz', run if dwi else None
    )


@pytest.mark.parametrize('dwi', [False, True])
def test_participant_wf(tmp_path, dwi):
    p = participant(tmp_path, dwi=dwi, session='A')
    wf = init_participant_wf(p, resolution=2, registration='affine', omp_nthreads=2)
    assert wf.name == participant_wf_name(p) == 'sub_01_ses_A_wf'
    anat = wf.get_node('anat_wf')
    assert anat.get_node('inputnode').inputs.t1w == str(tmp_path / 'T1w.nii.gz')
    assert (wf.get_node('dwi_wf') is not None) == dwi
    if dwi:
        links = edges(wf)
        prefix = 'sub_01_ses_A_wf.'
        assert (
            prefix + 'anat_wf.outputnode',
            't1w2std_xfm',
            prefix + 'dwi_wf.inputnode',
            't1w2std_xfm',
        ) in links
        assert (
            prefix + 'anat_wf.outputnode',
            'std_mask',
            prefix + 'dwi_wf.inputnode',
            'std_mask',
        ) in links
        assert wf.get_node('dwi_wf').get_node('inputnode').inputs.bval == str(
            tmp_path / 'dwi.bval'
        )


def test_participant_wf_with_precomputed(tmp_path):
    found = Precomputed('MNI152NLin2009cAsym', tmp_path / 'std.nii.gz', tmp_path / 'mask.nii.gz')
    wf = init_participant_wf(participant(tmp_path, dwi=False), resolution=2, precomputed=found)
    inputs = wf.get_node('anat_wf').get_node('inputnode').inputs
    assert inputs.std_t1w == str(tmp_path / 'std.nii.gz')
    assert wf.get_node('anat_wf').get_node('register') is None
    with pytest.raises(ValueError, match='native T1w'):
        init_participant_wf(participant(tmp_path, dwi=True), resolution=2, precomputed=found)
