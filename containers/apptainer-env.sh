#!/usr/bin/env bash
# A real `apptainer` for a host that has none (Debian bookworm, PyPI and npm have no Apptainer):
# Debian sid's apptainer package installed in a debootstrap'ed Debian trixie rootfs, run through
# Charliecloud's `ch-run` (Debian's charliecloud-runtime).  Built once, cached.  As root.
#
#   containers/apptainer-env.sh [--sif IMAGE] [--rebuild]
#
#   --sif IMAGE   also make a SIF of the podman image IMAGE (containers/toolkit.def from a
#                 `podman save` archive), cached by the image's id: $CACHE/sif/<id>.sif
#   --rebuild     rebuild the rootfs (and the SIF)
#
# stdout ends with `apptainer=<the wrapper>` (prepend its folder to PATH) and, with --sif,
# `sif=<path>`.  The wrapper runs `apptainer ARGS` in the rootfs with the host's /tmp, /var/tmp,
# the working directory and every folder the command names (--bind/-B SRC[:DST], --pwd, *.sif,
# *.def, *.tar, absolute folders) bound at the same paths; the environment (APPTAINERENV_*) is
# passed.  `exec`, `run`, `test` run as root: the SIF is mounted with squashfuse (no setuid, no
# unpacking).  `build` runs as uid 1000 with --fakeroot: as root in ch-run's one-id namespace the
# OCI unpack fails to chown (`lchown .../etc/gshadow: invalid argument`).
#
# Cache: $TOOLKIT_APPTAINER_CACHE (default /var/cache/toolkit-apptainer): rootfs-trixie/ (~420 MB),
# bin/apptainer, sif/ (the newest 2 SIFs are kept).  Environment: DEBIAN_MIRROR (default
# http://deb.debian.org/debian).  Measured on the 2-core VM: the rootfs 53 s cold; the SIF of the
# CI image (2.2 GB) 5-6 min, 1.2 GB (lz4); an `apptainer exec` start ~1.5 s.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${TOOLKIT_APPTAINER_CACHE:-/var/cache/toolkit-apptainer}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOTFS=$CACHE/rootfs-trixie
BIN=$CACHE/bin
REBUILD=0
IMAGE=
while [ $# -gt 0 ]; do
    case "$1" in
        --sif) IMAGE=${2:?--sif needs an image}; shift 2 ;;
        --rebuild) REBUILD=1; shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "apptainer-env.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

now() { date +%s%N; }
elapsed() { local ms=$(( ($(now) - $1) / 1000000 )); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
say() { echo "apptainer-env: $*" >&2; }
T0=$(now)

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9   # one builder at a time; the others wait and find it built

# --- 1. ch-run and debootstrap on the host ---------------------------------------------------
need=()
command -v ch-run >/dev/null 2>&1 || need+=(charliecloud-runtime)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "apptainer-env.sh: install ${need[*]} (apt-get) or run as root" >&2; exit 1; }
    t=$(now)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    say "apt install ${need[*]} took $(elapsed "$t") s"
fi
export USER=${USER:-$(id -un)}   # ch-run refuses to start without it

# --- 2. the trixie rootfs with sid's apptainer ----------------------------------------------
[ "$REBUILD" = 1 ] && rm -rf "$ROOTFS"
if [ -f "$ROOTFS/.toolkit-ready" ]; then
    say "$ROOTFS exists ($(cat "$ROOTFS/.toolkit-ready"))"
else
    [ "$(id -u)" = 0 ] || { echo "apptainer-env.sh: building $ROOTFS needs root (debootstrap)" >&2; exit 1; }
    work=$(mktemp -d "$CACHE/build.XXXXXX")
    trap 'umount -l "$work/rootfs/proc" 2>/dev/null || true; rm -rf "$work"' EXIT
    t=$(now)
    say "debootstrap trixie (minbase) into $work"
    debootstrap --variant=minbase --include=ca-certificates trixie "$work/rootfs" "$MIRROR" \
        > "$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
    say "debootstrap took $(elapsed "$t") s"
    t=$(now)
    # sid only for apptainer (trixie has no apptainer package); everything else stays trixie.
    # Check-Valid-Until=false: the mirror's sid Release file can be past its Valid-Until here.
    cat > "$work/rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR trixie main
deb $MIRROR sid main
EOF
    cat > "$work/rootfs/etc/apt/preferences.d/sid" <<EOF
Package: *
Pin: release n=sid
Pin-Priority: 100
EOF
    mount -t proc proc "$work/rootfs/proc"
    chroot "$work/rootfs" env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 sh -c \
        'apt-get -o Acquire::Check-Valid-Until=false update -qq && apt-get install -y -qq apptainer/sid squashfuse fuse2fs fuse-overlayfs >/dev/null' \
        > "$work/apt.log" 2>&1 || { tail -n 30 "$work/apt.log" >&2; exit 1; }
    umount -l "$work/rootfs/proc"
    rm -rf "$work"/rootfs/var/cache/apt/* "$work"/rootfs/var/lib/apt/lists/*
    version=$(chroot "$work/rootfs" apptainer --version 2>/dev/null)
    say "apt install apptainer took $(elapsed "$t") s: $version ($(du -sh "$work/rootfs" | cut -f1))"
    echo "$version, trixie rootfs built $(date -u +%Y-%m-%dT%H:%MZ)" > "$work/rootfs/.toolkit-ready"
    rm -rf "$ROOTFS"
    mv "$work/rootfs" "$ROOTFS"
    rm -rf "$work"
    trap - EXIT
fi

# --- 3. the wrapper ---------------------------------------------------------------------------
mkdir -p "$BIN" "$CACHE/home-build"
chmod 777 "$CACHE/home-build"   # HOME of the builds, which run as uid 1000
cat > "$BIN/apptainer.new" <<EOF
#!/usr/bin/env python3
"""apptainer through ch-run: Debian sid's apptainer in $ROOTFS (containers/apptainer-env.sh).
Binds the working directory, /tmp, /var/tmp and every folder the command names at the same paths;
build runs as uid 1000 with --fakeroot (as root, the OCI unpack cannot chown)."""
import os, sys
ROOTFS = "$ROOTFS"
args = sys.argv[1:]
folders = {os.getcwd(), "/var/tmp"}
for i, arg in enumerate(args[:-1]):
    if arg in ("--bind", "-B", "--pwd"):
        for spec in args[i + 1].split(","):
            folders.add(spec.split(":")[0])
for arg in args:
    if arg.endswith((".sif", ".def", ".tar")):
        folders.add(os.path.dirname(os.path.abspath(arg)))
    elif arg.startswith("/") and os.path.isdir(arg):
        folders.add(arg)
argv = ["ch-run", "--write", f"--cd={os.getcwd()}"]
command = next((a for a in args if not a.startswith("-")), "")
if command == "build" and os.getuid() == 0:
    argv += ["--uid=1000", "--gid=1000", "--set-env=HOME=$CACHE/home-build"]
    folders.add("$CACHE/home-build")
    args.insert(args.index("build") + 1, "--fakeroot")
else:
    argv.append("--set-env=HOME=/root" if os.getuid() == 0 else "--home")
for folder in sorted(f for f in folders if f and os.path.isdir(f) and f not in ("/", "/tmp")):
    os.makedirs(ROOTFS + folder, exist_ok=True)
    argv.append(f"--bind={folder}")
os.environ.setdefault("USER", "root" if os.getuid() == 0 else str(os.getuid()))
os.execvp("ch-run", [*argv, ROOTFS, "--", "apptainer", *args])
EOF
chmod 755 "$BIN/apptainer.new"
mv "$BIN/apptainer.new" "$BIN/apptainer"

# --- 4. the SIF of a podman image, cached by its id -------------------------------------------
sif=
if [ -n "$IMAGE" ]; then
    id=$(podman image inspect --format '{{.Id}}' "$IMAGE") \
        || { echo "apptainer-env.sh: podman has no image $IMAGE" >&2; exit 1; }
    id=${id#sha256:}
    sif=$CACHE/sif/${id:0:12}.sif
    mkdir -p "$CACHE/sif"
    [ "$REBUILD" = 1 ] && rm -f "$sif"
    if [ -f "$sif" ]; then
        say "$sif exists (image $IMAGE)"
    else
        t=$(now)
        work=$(mktemp -d /var/tmp/toolkit-sif.XXXXXX)
        trap 'rm -rf "$work"' EXIT
        podman save --quiet --format docker-archive -o "$work/image.tar" "$IMAGE"
        say "podman save took $(elapsed "$t") s ($(du -sh "$work/image.tar" | cut -f1))"
        chmod 777 "$work"   # the build runs as uid 1000
        # --notest: %test runs in the test that uses the SIF; lz4 (squashfuse reads it) packs faster than gzip
        (cd "$work" && "$BIN/apptainer" build --notest --disable-cache --tmpdir "$work" --mksquashfs-args "-comp lz4" \
            --build-arg IMAGE_ARCHIVE="$work/image.tar" "$work/image.sif" "$HERE/toolkit.def") \
            > "$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; exit 1; }
        mv "$work/image.sif" "$sif.new"
        mv "$sif.new" "$sif"
        rm -rf "$work"
        trap - EXIT
        ls -1t "$CACHE"/sif/*.sif | tail -n +3 | xargs -r rm -f   # keep the newest 2
        say "built $sif from $IMAGE in $(elapsed "$t") s ($(du -sh "$sif" | cut -f1))"
    fi
fi

say "ready in $(elapsed "$T0") s"
echo "apptainer=$BIN/apptainer"
[ -z "$sif" ] || echo "sif=$sif"
