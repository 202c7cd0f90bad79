# Shared by docker/build.sh and scripts/build_edge_arm64.sh (sourced, not run): logging, tools, buildah's
# configuration for this kind of machine, and the locally made Debian base image.
# Expects WORK (a folder for rootfs, logs, containers.conf) and DEBIAN_MIRROR to be set.

log() { printf '[%s %s] %s\n' "${LOG_NAME:-build}" "$(date +%H:%M:%S)" "$*"; }

# need_tools COMMAND=DEBIAN_PACKAGE...: apt-get installs the packages whose command is missing
need_tools() {
    local pair need=()
    for pair in "$@"; do
        command -v "${pair%%=*}" >/dev/null || need+=("${pair#*=}")
    done
    if [ ${#need[@]} -gt 0 ]; then
        log "installing ${need[*]}"
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
    fi
}

buildah_setup() {
    if [ -z "${CONTAINERS_CONF:-}" ]; then
        # this machine's cgroup setup rejects buildah's default ulimits and systemd cgroup manager
        printf '[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = "cgroupfs"\n' > "$WORK/containers.conf"
        export CONTAINERS_CONF=$WORK/containers.conf
    fi
    export BUILDAH_ISOLATION=chroot
}

# make_base IMAGE [ARCH]: Debian bookworm + Debian's python3.11 (stand-in for python:3.11-slim-bookworm), for ARCH
# (a Debian architecture, default this machine's; another one runs debootstrap's second stage under qemu-user-static
# through binfmt_misc). Slimmed as debian:bookworm-slim is (no docs but copyrights, man pages, locales, apt caches:
# 176 -> 129 MB on amd64) and as python:3.11-slim is (no stdlib bytecode or tests), so that the image sizes
# measured here are close to what the official base gives.
make_base() {
    local image=$1 arch=${2:-$(dpkg --print-architecture)} t0 rootfs ctr mnt variant=()
    buildah inspect --type image "$image" >/dev/null 2>&1 && return 0
    t0=$(date +%s)
    rootfs=$WORK/base-rootfs
    [ "$arch" = "$(dpkg --print-architecture)" ] || rootfs=$WORK/base-rootfs-$arch
    # (debootstrap removes $rootfs/debootstrap when both stages succeeded)
    if [ ! -x "$rootfs/usr/bin/python3.11" ] || [ -e "$rootfs/debootstrap" ]; then
        log "debootstrap --arch=$arch bookworm -> $rootfs (log: $WORK/debootstrap-$arch.log)"
        rm -rf "$rootfs"
        debootstrap --arch="$arch" --variant=minbase --include=python3.11,python3.11-venv,python3-venv,ca-certificates \
            bookworm "$rootfs" "$DEBIAN_MIRROR" > "$WORK/debootstrap-$arch.log" 2>&1 \
            || { tail -20 "$WORK/debootstrap-$arch.log"; return 1; }
    fi
    log "committing $image ($arch)"
    ctr=$(buildah from scratch)
    mnt=$(buildah mount "$ctr")
    tar -C "$rootfs" --exclude='./var/cache/apt/*.bin' --exclude='./var/cache/apt/archives/*.deb' \
        --exclude='./var/lib/apt/lists/*' --exclude='./var/log/*' --exclude='./usr/share/man/*' \
        --exclude='./usr/share/info/*' --exclude='./usr/share/locale/*' --exclude='./usr/share/lintian/*' \
        -cf - . | tar -C "$mnt" -xf -
    find "$mnt/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$mnt/usr/share/doc" -mindepth 1 -type d -empty -delete
    # and, as the official python images do, no bytecode and no test suites of Python's standard library (14 + 2 MB
    # on arm64): an image writes the bytecode of what it imports in its own build step (docker/Dockerfile.edge)
    find "$mnt"/usr/lib/python3* -depth \( -type d \( -name __pycache__ -o -name test -o -name tests \
        -o -name idle_test \) \) -exec rm -rf {} +
    # and packages installed later on this base stay slim (debian:bookworm-slim's /etc/dpkg/dpkg.cfg.d/docker)
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
        'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
        'path-exclude /usr/share/lintian/*' > "$mnt/etc/dpkg/dpkg.cfg.d/docker"
    buildah umount "$ctr" >/dev/null
    [ "$arch" = arm64 ] && variant=(--variant v8)
    buildah config --arch "$arch" "${variant[@]}" --os linux \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
        --cmd python3 "$ctr"
    buildah commit --rm -q "$ctr" "$image" >/dev/null
    log "base image $image ready in $(( $(date +%s) - t0 )) s"
}
