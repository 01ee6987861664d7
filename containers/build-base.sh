#!/usr/bin/env bash
# Build the offline CPU base image for CI and laptops, once: no image registry is needed.
#
#   containers/build-base.sh [--tag IMAGE] [--rebuild]
#
# 1. makes sure podman (+ runc, debootstrap) is installed and configured (root, Debian/Ubuntu);
# 2. builds localhost/toolkit-rootfs:bookworm from a debootstrap'ed Debian bookworm (python 3.11)
#    with `podman import` (skipped when the image exists);
# 3. builds localhost/toolkit-base:bookworm on top of it: this host's CA bundle (pip needs it to
#    reach PyPI through this network) and the CPU build of torch from /opt/wheels installed into
#    the system python — the local stand-in for the CUDA `pytorch/pytorch` base of production.
#    Skipped when the image exists; --rebuild rebuilds both.
#
# Environment: TOOLKIT_WHEELS (default /opt/wheels), TORCH_VERSION (default: the pin in
# constraints.txt), DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
TAG=localhost/toolkit-base:bookworm
ROOTFS_TAG=localhost/toolkit-rootfs:bookworm
REBUILD=0
WHEELS=${TOOLKIT_WHEELS:-/opt/wheels}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TORCH_VERSION=${TORCH_VERSION:-$(sed -n 's/^torch==\([^ #]*\).*/\1/p' "$REPO/constraints.txt" | head -n1)}

while [ $# -gt 0 ]; do
    case "$1" in
        --tag) TAG=$2; shift 2 ;;
        --rebuild) REBUILD=1; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "build-base.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

now() { date +%s%N; }
elapsed() { local ms=$(( ($(now) - $1) / 1000000 )); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
T0=$(now)
say() { echo "build-base: $*"; }

# --- 1. podman, configured -------------------------------------------------------------------
need=()
for tool in podman runc debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "build-base.sh: missing ${need[*]}; install them (apt-get install podman runc debootstrap) or run as root" >&2
        exit 1
    fi
    t=$(now)
    say "installing ${need[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # catatonit: podman's --init; uidmap: rootless use by other users
    apt-get install -y -qq --no-install-recommends podman runc debootstrap catatonit uidmap >/dev/null
    say "apt install took $(elapsed "$t") s"
fi

CONF=/etc/containers/containers.conf
WANT='# written by toolkit containers/build-base.sh (see shared FACTS: setrlimit and cgroup errors otherwise)
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"'
if [ "$(id -u)" = 0 ]; then
    if [ ! -f "$CONF" ]; then
        mkdir -p /etc/containers
        printf '%s\n' "$WANT" > "$CONF"
        say "wrote $CONF"
    elif ! cmp -s <(printf '%s\n' "$WANT") "$CONF"; then
        if grep -q 'nofile=20000:20000' "$CONF" && grep -q 'runtime *= *"runc"' "$CONF"; then
            say "$CONF differs but already has the needed settings; left as is"
        else
            cp -p "$CONF" "$CONF.before-toolkit"
            printf '%s\n' "$WANT" > "$CONF"
            say "rewrote $CONF (previous one kept as $CONF.before-toolkit)"
        fi
    fi
fi

# --- 2. the Debian rootfs image --------------------------------------------------------------
if [ "$REBUILD" = 1 ]; then
    podman image rm -f "$TAG" "$ROOTFS_TAG" >/dev/null 2>&1 || true
fi
if podman image exists "$TAG"; then
    say "$TAG exists ($(podman image inspect --format '{{.Id}}' "$TAG" | cut -c1-12)); nothing to do ($(elapsed "$T0") s)"
    exit 0
fi

if podman image exists "$ROOTFS_TAG"; then
    say "$ROOTFS_TAG exists; reusing it"
else
    [ "$(id -u)" = 0 ] || { echo "build-base.sh: debootstrap needs root" >&2; exit 1; }
    work=$(mktemp -d /var/tmp/toolkit-rootfs.XXXXXX)
    trap 'rm -rf "$work"' EXIT
    t=$(now)
    say "debootstrap bookworm (minbase + python3) into $work"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$work/rootfs" "$MIRROR" > "$work/debootstrap.log" 2>&1 \
        || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
    rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
    say "debootstrap took $(elapsed "$t") s ($(du -sh "$work/rootfs" | cut -f1))"
    t=$(now)
    tar -C "$work/rootfs" -c . | podman import --quiet \
        --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV=LANG=C.UTF-8' \
        --change 'CMD=["/bin/bash"]' \
        --message "debootstrap --variant=minbase bookworm + python3" - "$ROOTFS_TAG" >/dev/null
    rm -rf "$work"
    trap - EXIT
    say "podman import took $(elapsed "$t") s"
fi

# --- 3. CA bundle + CPU torch (no network beyond the registries) -----------------------------
t=$(now)
ctx=$(mktemp -d /var/tmp/toolkit-base-ctx.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
wheel=$(find "$WHEELS" -maxdepth 1 -name "torch-${TORCH_VERSION}*-cp311-*.whl" 2>/dev/null | sort | head -n1 || true)
if [ -n "$wheel" ]; then
    ln "$wheel" "$ctx/" 2>/dev/null || cp "$wheel" "$ctx/"
    spec=/tmp/ctx/$(basename "$wheel")
else
    say "no torch $TORCH_VERSION wheel in $WHEELS; using the CPU index of download.pytorch.org"
    spec="torch==$TORCH_VERSION --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple"
fi
cat > "$ctx/Containerfile" <<EOF
FROM $ROOTFS_TAG
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN --mount=type=bind,source=.,target=/tmp/ctx \\
    python3 -m pip install --no-cache-dir --break-system-packages $spec
LABEL org.opencontainers.image.title="toolkit-base" \\
      org.opencontainers.image.description="Debian bookworm minbase + python3.11 + CPU torch $TORCH_VERSION (offline CI base)"
EOF
podman build --quiet -t "$TAG" -f "$ctx/Containerfile" "$ctx" >/dev/null
rm -rf "$ctx"
trap - EXIT
say "torch layer took $(elapsed "$t") s"
say "built $TAG ($(podman image inspect --format '{{.Id}}' "$TAG" | cut -c1-12), $(podman image inspect --format '{{.Size}}' "$TAG" | numfmt --to=iec)) in $(elapsed "$T0") s"
