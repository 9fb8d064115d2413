#!/usr/bin/env bash
# image-check.sh: check the container images `make image` wrote, as a node
# gets them: load each OCI archive into a throwaway buildah storage, read its
# config, unpack its root and run its entrypoint from there.
#
# Usage: scripts/image-check.sh ARCH=ARCHIVE...   (run as root; `make image-check`)
#
#   ARCH       amd64 or arm64: the architecture the image must declare
#   ARCHIVE    OCI archive (bin/ctagent-image-ARCH.tar)
#
# Environment (set by the Makefile):
#   VERSION, REVISION  what `ctagent version` must print (the build's ldflags)
#   IMAGE_REVISION     the org.opencontainers.image.revision label (full commit)
#   IMAGE_REF          the name the archive must give its image
#   DAEMONSET          the manifest whose args and capabilities `check` runs
#                      with (default deploy/kubernetes/daemonset.yaml)
#
# Per image it checks: the archive's image name; architecture, entrypoint,
# cmd, port and OCI labels; that the entrypoint is a static ELF binary of that
# architecture; `version` run from the image's root (under chroot on the
# host's architecture, else under qemu-user-static). On the host's
# architecture it also runs `check` in the image's root the way the DaemonSet
# runs the container (see run_check). It prints each image's size and exits
# non-zero at the first failure.
set -euo pipefail

say() { printf 'image-check: %s\n' "$*"; }
fail() {
	printf 'image-check: FAIL: %s\n' "$*" >&2
	exit 1
}
trap 'fail "line $LINENO: $BASH_COMMAND exited $?"' ERR

(($# > 0)) || fail "usage: $0 ARCH=ARCHIVE..."
((EUID == 0)) || fail "must run as root (buildah storage, chroot, mounts)"
for v in VERSION REVISION IMAGE_REVISION IMAGE_REF; do
	[[ -n ${!v:-} ]] || fail "$v is not set (run it with make image-check)"
done
DAEMONSET=${DAEMONSET:-deploy/kubernetes/daemonset.yaml}
for c in buildah chroot unshare setpriv readelf tar timeout; do
	command -v "$c" >/dev/null || fail "$c not found (scripts/install-deps.sh installs it)"
done
host_arch=$(dpkg --print-architecture)

# A storage of its own, like a node that never saw the image: what is checked
# is the archive, not the build's storage. vfs: plain directories, so the
# root that `buildah mount` returns needs no unmount.
work=$(mktemp -d "${TMPDIR:-/tmp}/ctagent-image-check.XXXXXX")
buildah=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
cleanup() {
	"${buildah[@]}" rm --all >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

# yaml_list KEY FILE: the items of the first block list under "KEY:" (one
# "- item" a line, trailing comments dropped).
yaml_list() {
	awk -v key="$1:" '
		$1 == key && NF == 1 { in_list = 1; next }
		in_list && $1 == "-" { sub(/[[:space:]]+#.*/, ""); print $2; next }
		in_list { exit }' "$2"
}

# The DaemonSet's container args with `check` for `run`, and its added
# capabilities: check validates the same flags and attaches with only those.
mapfile -t ds_args < <(yaml_list args "$DAEMONSET")
mapfile -t ds_caps < <(yaml_list add "$DAEMONSET")
[[ ${ds_args[0]:-} == run ]] || fail "$DAEMONSET: the container args do not start with run: ${ds_args[*]}"
((${#ds_caps[@]} > 0)) || fail "$DAEMONSET: no capabilities.add list"
check_args=(check "${ds_args[@]:1}" --log.level=error)

# inspect IMAGE TEMPLATE: a field of the image's OCI config; label IMAGE
# NAME: its label org.opencontainers.image.NAME.
inspect() { "${buildah[@]}" inspect --type image --format "{{$2}}" "$1"; }
label() { inspect "$1" "index .OCIv1.Config.Labels \"org.opencontainers.image.$2\""; }

expect() { # expect WHAT GOT WANT
	[[ $2 == "$3" ]] || fail "$1: got '$2', want '$3'"
}

# run_check ROOT ENTRYPOINT ENV...: `ctagent check` in the image's root as the
# DaemonSet runs it. Bare chroot is not enough: without /proc every backend
# is refused (cilium/ebpf reads /proc/self/mountinfo before loading, the
# netlink backend stats /proc/self/ns/net), and a runtime always gives the
# container /proc and /sys. So, in a mount namespace of its own (unshare -m:
# nothing shows on the host, everything goes when check exits, failed or
# not), the root gets what the runtime and the DaemonSet give the container:
# the root read-only (readOnlyRootFilesystem), a new procfs at /proc (hostPID:
# the host's PID namespace), sysfs read-only at /sys (with /sys/kernel/btf,
# which the DaemonSet mounts from the host), and the DaemonSet's other
# hostPath mounts: /sys/fs/bpf, /sys/fs/cgroup (ro), the host's /proc at
# /host/proc (ro), /var/run/netns (ro), a tmpfs /tmp. setpriv keeps only the
# DaemonSet's capabilities in the bounding set (and CAP_SYS_CHROOT, which
# chroot needs before it executes ctagent); a capability this machine lacks
# stays missing. The environment is the image's (env -i, before the host's
# tools run: the image has none).
run_check() {
	local root=$1 entry=$2
	shift 2
	local caps=-all,+sys_chroot c
	for c in "${ds_caps[@]}"; do caps+=",+${c,,}"; done
	local d
	for d in proc sys host/proc var/run/netns tmp; do mkdir -p "$root/$d"; done
	# shellcheck disable=SC2016 # expanded by the inner shell
	env -i "$@" timeout 60 unshare --mount --propagation private -- bash -euc '
		root=$1 caps=$2
		shift 2
		mount --bind "$root" "$root"
		mount -o remount,bind,ro "$root"
		mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
		mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
		[[ ! -d /sys/fs/bpf ]] || mount --bind /sys/fs/bpf "$root/sys/fs/bpf"
		mount --rbind -o ro /sys/fs/cgroup "$root/sys/fs/cgroup"
		mount --rbind -o ro /proc "$root/host/proc"
		[[ ! -d /run/netns ]] || mount --rbind -o ro /run/netns "$root/var/run/netns"
		mount -t tmpfs -o size=16m,mode=1777 tmpfs "$root/tmp"
		exec setpriv --bounding-set "$caps" chroot "$root" "$@"
	' image-check "$root" "$caps" "$entry" "${check_args[@]}"
}

# qemu-user-static's name for a Debian architecture.
qemu_for() {
	case $1 in
	amd64) echo qemu-x86_64-static ;;
	arm64) echo qemu-aarch64-static ;;
	*) fail "no qemu-user for $1" ;;
	esac
}

declare -A elf_machine=([amd64]="Advanced Micro Devices X86-64" [arm64]=AArch64)
sizes=()

for spec in "$@"; do
	arch=${spec%%=*} archive=${spec#*=}
	[[ $arch != "$spec" && -n ${elf_machine[$arch]:-} ]] || fail "bad argument '$spec' (want amd64=FILE or arm64=FILE)"
	[[ -s $archive ]] || fail "$archive: missing or empty (make image-$arch)"
	say "== $arch: $archive"

	# The name the archive gives its image (ctr, podman and skopeo use it).
	index=$(tar -xOf "$archive" index.json)
	[[ $index == *"\"org.opencontainers.image.ref.name\":\"$IMAGE_REF\""* ]] ||
		fail "$archive: index.json does not name the image $IMAGE_REF: $index"

	image=$("${buildah[@]}" pull --quiet --arch "$arch" "oci-archive:$archive") ||
		fail "$archive: buildah cannot load it as a linux/$arch image"
	expect "$arch: os/architecture" "$(inspect "$image" .OCIv1.OS)/$(inspect "$image" .OCIv1.Architecture)" "linux/$arch"
	expect "$arch: entrypoint" "$(inspect "$image" .OCIv1.Config.Entrypoint)" "[/usr/local/bin/ctagent]"
	expect "$arch: cmd" "$(inspect "$image" .OCIv1.Config.Cmd)" "[run]"
	expect "$arch: exposed ports" "$(inspect "$image" .OCIv1.Config.ExposedPorts)" "map[10371/tcp:{}]"
	expect "$arch: label version" "$(label "$image" version)" "$VERSION"
	expect "$arch: label revision" "$(label "$image" revision)" "$IMAGE_REVISION"
	source=$(label "$image" source)
	[[ $source == https://* ]] || fail "$arch: label source: '$source'"
	entry=$(inspect "$image" "index .OCIv1.Config.Entrypoint 0")
	mapfile -t env < <(inspect "$image" 'range .OCIv1.Config.Env}}{{println .}}{{end' | grep .)

	container=$("${buildah[@]}" from --quiet "$image")
	root=$("${buildah[@]}" mount "$container")
	[[ -x $root$entry ]] || fail "$arch: $entry is not an executable file in the image"
	files=$(find "$root" -mindepth 1 -not -type d -printf '/%P\n')
	expect "$arch: files in the image" "$files" "$entry"
	root_bytes=$(du -sb "$root" | cut -f1)

	# Static, of the image's architecture: FROM scratch has no loader.
	machine=$(readelf -h "$root$entry" | awk -F': +' '/Machine:/ {print $2}')
	expect "$arch: ELF machine of $entry" "$machine" "${elf_machine[$arch]}"
	phdrs=$(readelf -lW "$root$entry")
	[[ $phdrs != *"program interpreter"* ]] || fail "$arch: $entry is dynamically linked"
	say "$entry: static ELF, $machine"

	# The image's environment only (env -i); the entrypoint from its root.
	if [[ $arch == "$host_arch" ]]; then
		run=(chroot "$root" "$entry")
		how="chroot"
	else
		qemu=$(qemu_for "$arch")
		command -v "$qemu" >/dev/null || fail "$qemu not found (scripts/install-deps.sh installs qemu-user-static)"
		run=("$qemu" -L "$root" "$root$entry")
		how="$qemu (no chroot: the host cannot execute $arch)"
	fi
	out=$(env -i "${env[@]}" timeout 30 "${run[@]}" version 2>&1) || fail "$arch: $entry version: $out"
	say "$entry version, under $how:"
	sed 's/^/    /' <<<"$out"
	[[ $out == *"ctagent, version $VERSION (revision: $REVISION)"* ]] || fail "$arch: version does not print $VERSION (revision: $REVISION)"
	[[ $out == *"platform:   linux/$arch"* ]] || fail "$arch: version does not print platform linux/$arch"

	if [[ $arch == "$host_arch" ]]; then
		say "$entry ${check_args[*]}, in the root as $DAEMONSET runs it:"
		rc=0
		out=$(run_check "$root" "$entry" "${env[@]}" 2>&1) || rc=$?
		sed 's/^/    /' <<<"$out"
		((rc == 0)) || fail "$arch: check exited $rc"
		for want in "version:    $VERSION (revision $REVISION)" "flags:      ok" "btf:        /sys/kernel/btf/" "backend:    " "kernel:     " "result:     ok: ctagent run would use the "; do
			grep -qF -- "$want" <<<"$out" || fail "$arch: check printed no line '$want'"
		done
		if grep -q '^backend: *none' <<<"$out"; then fail "$arch: check found no backend"; fi
	fi

	bytes=$(stat -c %s "$archive")
	"${buildah[@]}" rm "$container" >/dev/null
	sizes+=("$(awk -v a="$arch" -v f="$archive" -v b="$bytes" -v r="$root_bytes" 'BEGIN {
		printf "%-5s %s: %d bytes (%.1f MiB), unpacked %d bytes (%.1f MiB)", a, f, b, b / 1048576, r, r / 1048576 }')")
done

say "== sizes (OCI archive, gzip layer; unpacked root)"
for s in "${sizes[@]}"; do say "$s"; done
say "ok: $# images"
