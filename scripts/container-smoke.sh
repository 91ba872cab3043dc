#!/usr/bin/env bash
# Build the image and run it the way the BIDS-Apps example CI does: --version, the participant
# level and the group level on a simulated dataset mounted read-only, with a read-only container
# filesystem and a tmpfs on /tmp, as a non-root user, without network; then check the outputs.
#
#   scripts/container-smoke.sh              # build, simulate, run both levels, check
#   SKIP_BUILD=1 scripts/container-smoke.sh # reuse the image
#
# Settings (environment variables; the defaults suit the project's Debian 12 machines, which
# have podman but no Docker engine or registry, see docs/containers.md):
#   ENGINE         podman or docker                                   [podman]
#   BASE_IMAGE     base of both stages; the default is made with mmdebstrap when missing;
#                  elsewhere use python:3.11-slim-bookworm    [localhost/debian-minbase:bookworm]
#   TORCH_VARIANT  cpu or cuda                                        [cpu]
#   IMAGE          tag to build and run                [bids_anomaly:<version>, plus -cpu for cpu]
#   CA_BUNDLE      CA file handed to pip as a build secret            [$PIP_CERT]
#   WHEELHOUSE     folder of wheels mounted into the build (podman)   [$PIP_FIND_LINKS if a folder]
#   BUILD_OPTS     extra build options                  [--isolation chroot --format docker]
#   RUN_OPTS       extra run options       [--runtime runc --ulimit nofile=... --ulimit nproc=...]
#   SMOKE_DIR      scratch folder for the dataset and outputs         [a new folder in /tmp]
#   N_CONTROLS, N_PATIENTS, SEED   simulated cohort                   [8, 4, 0]
#   LEVEL_OPTS     options of both levels  [--resolution 2 --registration affine --nprocs 2 ...]
#   GROUP_OPTS     extra options of the group level   [--train --models ae-patch --epochs 2 ...]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/pyproject.toml")
torch_version=$(sed -n 's/^ARG TORCH_VERSION=//p' "$repo/Dockerfile")
ENGINE=${ENGINE:-podman}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian-minbase:bookworm}
TORCH_VARIANT=${TORCH_VARIANT:-cpu}
IMAGE=${IMAGE:-bids_anomaly:${version}$([ "$TORCH_VARIANT" = cpu ] && echo -cpu)}
CA_BUNDLE=${CA_BUNDLE-${PIP_CERT:-}}
WHEELHOUSE=${WHEELHOUSE-${PIP_FIND_LINKS:-}}
[ -d "$WHEELHOUSE" ] || WHEELHOUSE=
if [ "$ENGINE" = podman ]; then
    BUILD_OPTS=${BUILD_OPTS---isolation chroot --format docker}
    RUN_OPTS=${RUN_OPTS---runtime runc --ulimit nofile=20000:20000 --ulimit nproc=32768:32768}
fi
N_CONTROLS=${N_CONTROLS:-8}
N_PATIENTS=${N_PATIENTS:-4}
SEED=${SEED:-0}
LEVEL_OPTS=${LEVEL_OPTS:---resolution 2 --registration affine --nprocs 2 --omp-nthreads 2 --seed 0}
GROUP_OPTS=${GROUP_OPTS:---train --models ae-patch --epochs 2 --patches-per-subject 1000
    --embedding-max-points 1000}

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'container-smoke: FAILED: %s\n' "$*" >&2; exit 1; }
elapsed() { awk -v start="$1" -v now="$(date +%s.%N)" 'BEGIN { printf "%.1f", now - start }'; }

build_image() {
    local vcs_ref
    vcs_ref=$(git -C "$repo" rev-parse HEAD 2> /dev/null || echo unknown)
    local args=(--file "$repo/Dockerfile" --tag "$IMAGE"
                --build-arg "TORCH_VARIANT=$TORCH_VARIANT" --build-arg "VERSION=$version"
                --build-arg "IMAGE_TAG=$IMAGE" --build-arg "BASE_IMAGE=$BASE_IMAGE"
                --build-arg "VCS_REF=$vcs_ref")
    if [ "$BASE_IMAGE" = localhost/debian-minbase:bookworm ] \
            && ! "$ENGINE" image inspect "$BASE_IMAGE" > /dev/null 2>&1; then
        step "making $BASE_IMAGE with mmdebstrap (Debian's archive, no registry)"
        local rootfs
        rootfs=$(mktemp --suffix=.tar)
        # the host's own apt sources, so that no archive address is written here
        local sources
        for sources in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list ''; do
            [ -z "$sources" ] || [ -s "$sources" ] && break
        done
        [ -n "$sources" ] || fail 'no apt sources on this host for mmdebstrap'
        mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "$rootfs" \
            "$sources"
        "$ENGINE" import "$rootfs" "$BASE_IMAGE"
        rm -f "$rootfs"
    fi
    if [ -n "$CA_BUNDLE" ]; then
        args+=(--secret "id=ca_bundle,src=$CA_BUNDLE")
    fi
    if [ -n "$WHEELHOUSE" ]; then
        [ "$ENGINE" = podman ] || fail 'WHEELHOUSE needs podman (docker build has no -v)'
        args+=(--volume "$WHEELHOUSE:/wheelhouse:ro" --build-arg WHEELHOUSE=/wheelhouse)
    fi
    step "building $IMAGE ($ENGINE, torch $torch_version $TORCH_VARIANT, base $BASE_IMAGE)"
    local started
    started=$(date +%s.%N)
    # shellcheck disable=SC2086  # BUILD_OPTS is a list of options
    "$ENGINE" build $BUILD_OPTS "${args[@]}" "$repo"
    echo "build time: $(elapsed "$started") s"
}

# Run the image as in production; the arguments go to the entry point (or to --entrypoint).
run_image() {
    # shellcheck disable=SC2086  # RUN_OPTS is a list of options
    "$ENGINE" run --rm --init --read-only --tmpfs /tmp --network none --user "$user" $userns \
        $RUN_OPTS "$@"
}

json_field() {  # json_field FILE PYTHON-EXPRESSION-ON-d
    python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print($2)" "$1"
}

count() { find "$@" 2> /dev/null | wc -l; }

[ -n "${SKIP_BUILD:-}" ] || build_image
echo "image size: $("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE" \
    | awk '{printf "%.2f GB", $1 / 1e9}')"

# The image's user (uid 1000) writes the outputs; a non-root caller runs it as itself instead.
SMOKE_DIR=${SMOKE_DIR:-$(mktemp -d /tmp/bids_anomaly-smoke.XXXXXX)}
mkdir -p "$SMOKE_DIR/bids" "$SMOKE_DIR/out" "$SMOKE_DIR/work"
userns=
if [ "$(id -u)" = 0 ]; then
    user=1000:1000
    chown 1000:1000 "$SMOKE_DIR/bids" "$SMOKE_DIR/out" "$SMOKE_DIR/work"
else
    user="$(id -u):$(id -g)"
    if [ "$ENGINE" = podman ]; then
        userns=--userns=keep-id
    fi
fi
echo "scratch: $SMOKE_DIR"

step 'bids_anomaly --version'
started=$(date +%s.%N)
got=$(run_image "$IMAGE" --version)
echo "$got (run time $(elapsed "$started") s)"
[ "$got" = "bids_anomaly $version" ] || fail "--version printed '$got'"

step 'environment inside the image'
run_image --entrypoint python "$IMAGE" -c '
import os, torch
print("uid", os.getuid(), "| torch", torch.__version__,
      "| CUDA available", torch.cuda.is_available(),
      "| BIDS_ANOMALY_CONTAINER", os.environ["BIDS_ANOMALY_CONTAINER"])'

if [ ! -f "$SMOKE_DIR/bids/dataset_description.json" ]; then
    step "simulating $N_CONTROLS controls and $N_PATIENTS patients (seed $SEED)"
    started=$(date +%s.%N)
    run_image -v "$SMOKE_DIR/bids:/bids" --entrypoint bids_anomaly-simulate "$IMAGE" \
        /bids --n-controls "$N_CONTROLS" --n-patients "$N_PATIENTS" --seed "$SEED"
    echo "simulation: $(elapsed "$started") s"
fi
n_subjects=$(count "$SMOKE_DIR/bids" -maxdepth 1 -name 'sub-*' -type d)
[ "$n_subjects" = $((N_CONTROLS + N_PATIENTS)) ] || fail "simulated $n_subjects participants"
mounts=(-v "$SMOKE_DIR/bids:/data:ro" -v "$SMOKE_DIR/out:/out" -v "$SMOKE_DIR/work:/work")

step 'participant level (input read-only)'
started=$(date +%s.%N)
# shellcheck disable=SC2086  # LEVEL_OPTS is a list of options
run_image "${mounts[@]}" "$IMAGE" /data /out participant -w /work $LEVEL_OPTS
echo "participant level: $(elapsed "$started") s"
description="$SMOKE_DIR/out/dataset_description.json"
[ -f "$description" ] || fail 'no dataset_description.json'
tag=$(json_field "$description" 'd["GeneratedBy"][0].get("Container", {}).get("Tag")')
[ "$tag" = "$IMAGE" ] || fail "GeneratedBy Container Tag is '$tag', expected '$IMAGE'"
n_preproc=$(count "$SMOKE_DIR/out" -path '*/anat/*_space-*_desc-preproc_T1w.nii.gz')
[ "$n_preproc" = "$n_subjects" ] \
    || fail "$n_preproc template-space T1w for $n_subjects participants"
echo "ok: $n_preproc template-space T1w images, Container.Tag $tag"
verdict=$(grep -h 'BIDS validation:' "$SMOKE_DIR"/out/logs/bids_anomaly_participant_*.log | tail -1)
case "$verdict" in
    *'BIDS validation: bids-validator 1.'*) echo "ok: ${verdict#*INFO    }" ;;
    *) fail "the official BIDS validator did not run: '$verdict'" ;;
esac

step 'group level (input read-only)'
started=$(date +%s.%N)
# shellcheck disable=SC2086  # LEVEL_OPTS and GROUP_OPTS are lists of options
run_image "${mounts[@]}" "$IMAGE" /data /out group -w /work $LEVEL_OPTS $GROUP_OPTS
echo "group level: $(elapsed "$started") s"
n_models=$(count "$SMOKE_DIR/out/models" -name model.json)
n_tables=$(count "$SMOKE_DIR/out" -maxdepth 1 -name 'group_*.tsv')
n_maps=$(count "$SMOKE_DIR/out" -path '*/anat/*_statmap.nii.gz')
[ "$n_models" -ge 1 ] || fail 'no model bundle in OUTPUT_DIR/models'
[ "$n_tables" -ge 1 ] || fail 'no group_*.tsv table'
[ "$n_maps" -ge "$n_subjects" ] || fail "$n_maps anomaly maps for $n_subjects participants"
[ -s "$SMOKE_DIR/out/group_report.html" ] || fail 'no group_report.html'
echo "ok: $n_models model bundle(s), $n_tables group table(s), $n_maps anomaly maps, report"

printf '\ncontainer-smoke: all checks passed (%s, outputs in %s)\n' "$IMAGE" "$SMOKE_DIR/out"
