#!/usr/bin/env bash
# install-deps.sh: install the Debian 12 packages ctagent's build and tests need
# (clang/llvm for the BPF objects, libbpf headers, bpftool, the qemu kernel lab
# for amd64 and arm64 guests, the network tools, Prometheus and curl used by
# the tests, a C compiler for the race detector, buildah for the container
# image and qemu-user-static to run its arm64 binary).
# Idempotent: when every package is already installed it only runs dpkg-query.
# Run as root.
set -euo pipefail

PACKAGES=(
	clang-19 llvm-19 libbpf-dev bpftool
	qemu-system-x86 qemu-system-arm busybox-static cpio kmod xz-utils binutils debian-archive-keyring
	conntrack nftables iproute2 iputils-ping traceroute curl
	prometheus systemd make git
	buildah qemu-user-static
	gcc libc6-dev # cgo, for go test -race
)

say() { printf 'install-deps: %s\n' "$*"; }

missing=()
for p in "${PACKAGES[@]}"; do
	status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
	[[ $status == installed ]] || missing+=("$p")
done

# (scripts/vmtest.sh resolves its kernels with package lists of its own, so
# the system's are refreshed only to install.)
if ((${#missing[@]} == 0)); then
	say "all ${#PACKAGES[@]} packages present"
	exit 0
fi

if ((EUID != 0)); then
	say "must run as root to install: ${missing[*]}" >&2
	exit 1
fi

say "apt-get update"
apt-get update -qq

say "installing: ${missing[*]}"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
	"${missing[@]}"

still=()
for p in "${PACKAGES[@]}"; do
	status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
	[[ $status == installed ]] || still+=("$p")
done
if ((${#still[@]} > 0)); then
	say "still missing after install: ${still[*]}" >&2
	exit 1
fi
say "done"
