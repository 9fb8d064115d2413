#!/usr/bin/env bash
# vmtest.sh: run static Go test binaries inside real Debian kernels under qemu.
#
# Usage: scripts/vmtest.sh [-k KERNEL_NAME]... [-f SRC[:DST]]... [-p] [-l] TESTBIN...
#
#   TESTBIN    static Go test binary (CGO_ENABLED=0 go test -c -o X ./pkg/...);
#              run in the guest as `TESTBIN -test.v -test.count=1 $VMTEST_ARGS`
#              with the current directory /vmtest/files. Each kernel runs the
#              binaries of its architecture (read from their ELF headers:
#              amd64, or arm64 built with GOARCH=arm64); a name may be given
#              once per architecture.
#   -k NAME    run only this kernel (repeatable; default: every kernel below)
#   -f SRC[:DST]  also copy file or directory SRC into the guest at DST
#              (absolute guest path; default /vmtest/files/<basename SRC>)
#   -p         prepare only: download/extract the kernels, boot nothing
#   -l         list the kernels and exit
#
# Environment:
#   VMTEST_ARGS     extra test binary arguments, shell-quoted words
#                   (e.g. VMTEST_ARGS="-test.run 'TestA|TestB' -test.timeout 10m")
#   VMTEST_ENV      extra guest environment, shell-quoted NAME=VALUE words
#   VMTEST_FILES    like -f, shell-quoted SRC[:DST] words
#   VMTEST_MODULES  extra kernel modules to load in the guest (space-separated)
#   VMTEST_TIMEOUT  per-kernel boot+test timeout in seconds (default 800; a
#                   kernel takes 160-400 s under TCG here). Each test binary gets
#                   -test.timeout of two thirds of it (VMTEST_ARGS may
#                   override), so a hung test prints its goroutines while
#                   the guest still runs the others.
#   VMTEST_MEM      guest memory in MiB (default 2048)
#   VMTEST_SMP      guest CPUs (default 2)
#   VMTEST_CACHE    cache directory (default <repo>/.cache/vmtest)
#   VMTEST_MIRROR, VMTEST_SECURITY_MIRROR
#                   Debian mirror URIs for the kernel suites and the tools of
#                   foreign-architecture guests (default: the ones the
#                   system's apt sources use for its own release)
#   VMTEST_KEEP=1   keep the per-run work directory (initramfs images)
#
# Exit status: 0 when every selected kernel booted, every test binary exited 0
# and at least one test ran; 1 otherwise; 2 on usage or setup errors.
#
# Per kernel it prints one result line
#   vmtest <name> (<uname -r>, <arch>): hooks <text>: N passed, N failed
# and at the end a total line `vmtest: N passed, N failed`.
set -euo pipefail

# ---------------------------------------------------------------------------
# Kernels: NAME  ARCH  SUITES  META-PACKAGE  [DOWNLOAD-SUFFIX]
# ARCH: the Debian architecture, amd64 or arm64 (see arch_setup: qemu, the
# console, the test channel); the guest runs the test binaries and tools of
# that architecture: the host's own for amd64, for arm64 the packages of the
# host's Debian release downloaded for arm64 (see prepare_userland).
# SUITES: the Debian suites (comma-separated) the kernel comes from, read with
# an apt configuration of their own (see "Kernel download" below). The meta
# package is resolved with `apt-cache depends` in them at run time, so each
# run takes the current version; the optional suffix is appended to the
# resolved package name for the download (Debian 12's 6.12 kernel is fetched
# as the `-unsigned` package).
KERNELS=(
	"debian-5.10       amd64  bullseye,bullseye-security  linux-image-cloud-amd64"
	"debian-6.1        amd64  bookworm,bookworm-security  linux-image-cloud-amd64"
	"debian-6.12       amd64  bookworm,bookworm-security  linux-image-6.12-cloud-amd64  -unsigned"
	"debian-sid        amd64  sid                         linux-image-cloud-amd64"
	"debian-6.1-arm64  arm64  bookworm,bookworm-security  linux-image-cloud-arm64"
)

# Modules loaded in the guest, in this order, with what they depend on.
# `?` marks optional ones: a kernel without such a module (nft_counter is
# part of nf_tables since 5.13) skips it, and the run says so. Built-in ones
# are skipped silently. ipv6 and nfnetlink are not named: where they are
# modules they come as dependencies, and in sid's 7.x they are part of the
# kernel without being listed in modules.builtin (no longer modular), so
# naming them would fail there.
MODULES=(
	veth nf_defrag_ipv4 nf_defrag_ipv6 nf_conntrack nf_conntrack_netlink
	nf_nat nf_tables nft_ct nft_counter? nft_nat nft_masq nft_redir nft_chain_nat
	nft_reject? nft_reject_inet?
)

# Real (dynamically linked) tools copied with their libraries, as
# NAME:DEBIAN-PACKAGE; they replace busybox's applets of the same name. `?`
# marks optional ones. The package is what a foreign-architecture guest
# downloads them from (see prepare_userland).
TOOLS=(
	ip:iproute2 nft:nftables conntrack:conntrack ping:iputils-ping traceroute:traceroute
	ss:iproute2? tc:iproute2? bpftool:bpftool? dash:dash? setpriv:util-linux?
)
# ---------------------------------------------------------------------------

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export LC_ALL=C

say() { printf 'vmtest: %s\n' "$*"; }
warn() { printf 'vmtest: warning: %s\n' "$*" >&2; }
die() {
	printf 'vmtest: error: %s\n' "$*" >&2
	exit 2
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPTS="$ROOT/scripts"
CACHE=${VMTEST_CACHE:-$ROOT/.cache/vmtest}
TIMEOUT=${VMTEST_TIMEOUT:-800}
MEM=${VMTEST_MEM:-2048}
SMP=${VMTEST_SMP:-2}
BUSYBOX=/bin/busybox
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
	exit 2
}

kernel_names() {
	local l f
	for l in "${KERNELS[@]}"; do
		read -r -a f <<<"$l"
		echo "${f[0]}"
	done
}

# kernel_line NAME: set KLINE to the fields of NAME's KERNELS line.
kernel_line() {
	local l
	for l in "${KERNELS[@]}"; do
		read -r -a KLINE <<<"$l"
		[[ ${KLINE[0]} == "$1" ]] || continue
		((${#KLINE[@]} == 4 || ${#KLINE[@]} == 5)) || die "KERNELS line '$l': want NAME ARCH SUITES META [SUFFIX]"
		return 0
	done
	die "unknown kernel '$1' (known: $(kernel_names | tr '\n' ' '))"
}

# Architectures, all emulated with qemu's TCG (KVM guests hang on these
# machines). arch_setup ARCH sets
#   ARCH_QEMU     the qemu binary
#   ARCH_ELF      the machine `readelf -h` names for its binaries
#   ARCH_TRIPLET  its Debian multiarch triplet (library directories)
#   ARCH_CONSOLE  the kernel console
#   ARCH_CHANNEL  the guest device of the test channel (a port the host
#                 writes to a file, free of kernel messages), then the
#                 modules that device needs
KNOWN_ARCHES=(amd64 arm64)
arch_setup() {
	case $1 in
	amd64)
		ARCH_QEMU=qemu-system-x86_64 ARCH_ELF="Advanced Micro Devices X86-64"
		ARCH_TRIPLET=x86_64-linux-gnu ARCH_CONSOLE=ttyS0 ARCH_CHANNEL=(/dev/ttyS1)
		;;
	arm64)
		# qemu's virt machine has a single PL011 UART (qemu 7.2): the
		# channel is a virtio console, whose drivers are modules in
		# Debian's arm64 kernels.
		ARCH_QEMU=qemu-system-aarch64 ARCH_ELF=AArch64
		ARCH_TRIPLET=aarch64-linux-gnu ARCH_CONSOLE=ttyAMA0
		ARCH_CHANNEL=(/dev/hvc0 virtio_mmio virtio_console)
		;;
	*) die "unknown architecture '$1' (known: ${KNOWN_ARCHES[*]})" ;;
	esac
}

# qemu_args ARCH KERNEL INITRD OUT: set QEMU_ARGS: the machine, the console
# on stdio, the test channel into the file OUT, the kernel and initramfs.
qemu_args() {
	local arch=$1 kernel=$2 initrd=$3 out=$4
	arch_setup "$arch"
	QEMU_ARGS=(-m "$MEM" -smp "$SMP" -nographic -no-reboot -nic none -monitor none -serial stdio)
	case $arch in
	amd64) QEMU_ARGS+=(-accel tcg -cpu max -serial "file:$out") ;;
	arm64)
		[[ $out != *,* ]] || die "the path $out has a comma, which qemu's -chardev cannot take"
		# pauth-impdef: pointer authentication (the kernel signs return
		# addresses) with a cheap implementation-defined hash instead of
		# the architected QARMA, which TCG computes slowly.
		QEMU_ARGS+=(-M virt -accel tcg -cpu "max,pauth-impdef=on"
			-device virtio-serial-device -chardev "file,id=vmtestout,path=$out"
			-device "virtconsole,chardev=vmtestout")
		;;
	esac
	# oops=panic: an oops (Debian's kernels only kill the task by default)
	# can leave locks held and the guest hung until the timeout; a panic
	# ends the run at once, with the oops in the console log.
	QEMU_ARGS+=(-kernel "$kernel" -initrd "$initrd" -append "console=$ARCH_CONSOLE panic=-1 oops=panic quiet")
}

# elf_arch FILE: print the architecture (KNOWN_ARCHES) of the ELF file FILE;
# fails printing readelf's machine name (or nothing) for any other.
elf_arch() {
	local machine a
	machine=$(readelf -h "$1" 2>/dev/null | sed -n 's/^ *Machine: *//p')
	for a in "${KNOWN_ARCHES[@]}"; do
		arch_setup "$a"
		[[ $machine == "$ARCH_ELF" ]] && echo "$a" && return 0
	done
	echo "$machine"
	return 1
}

# split_words STRING: print the shell-quoted words of STRING, one per line.
split_words() {
	[[ -n "${1// /}" ]] || return 0
	xargs -r printf '%s\n' <<<"$1" || die "cannot parse: $1"
}

SELECTED=()
EXTRA_FILES=()
PREPARE_ONLY=0
while getopts ':k:f:plh' opt; do
	case $opt in
	k) SELECTED+=("$OPTARG") ;;
	f) EXTRA_FILES+=("$OPTARG") ;;
	p) PREPARE_ONLY=1 ;;
	l)
		kernel_names
		exit 0
		;;
	h) usage ;;
	:) die "option -$OPTARG needs an argument" ;;
	*) die "unknown option -$OPTARG (see -h)" ;;
	esac
done
shift $((OPTIND - 1))
TESTBINS=("$@")
while IFS= read -r w; do EXTRA_FILES+=("$w"); done < <(split_words "${VMTEST_FILES:-}")

if ((${#SELECTED[@]} == 0)); then
	mapfile -t SELECTED < <(kernel_names)
fi
mapfile -t ALL_KERNELS < <(kernel_names)
for k in "${SELECTED[@]}"; do
	known=0
	for n in "${ALL_KERNELS[@]}"; do [[ $n == "$k" ]] && known=1; done
	((known)) || die "unknown kernel '$k' (known: ${ALL_KERNELS[*]})"
done
if ((PREPARE_ONLY == 0 && ${#TESTBINS[@]} == 0)); then
	die "no test binaries given (usage: scripts/vmtest.sh [-k KERNEL]... TESTBIN...; -h for help)"
fi
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "VMTEST_TIMEOUT must be a number of seconds"

need=(apt-cache apt-get apt-config dpkg dpkg-deb depmod modprobe cpio gzip xz ldd readelf sha256sum timeout flock xargs)
for c in "${need[@]}"; do
	command -v "$c" >/dev/null || die "'$c' not found: run scripts/install-deps.sh"
done
[[ -x $BUSYBOX ]] || die "$BUSYBOX not found: run scripts/install-deps.sh (busybox-static)"
[[ -f $KEYRING ]] || die "$KEYRING not found: run scripts/install-deps.sh (debian-archive-keyring)"
HOST_ARCH=$(dpkg --print-architecture)

# The architectures of the selected kernels, and their qemu.
declare -A KARCH=() ARCH_USED=()
for k in "${SELECTED[@]}"; do
	kernel_line "$k"
	arch_setup "${KLINE[1]}"
	KARCH[$k]=${KLINE[1]}
	ARCH_USED[${KLINE[1]}]=1
	if ((PREPARE_ONLY == 0)); then
		command -v "$ARCH_QEMU" >/dev/null || die "'$ARCH_QEMU' not found (for $k): run scripts/install-deps.sh"
	fi
done

# Test binaries: must exist, be ELF executables of a known architecture,
# one name per architecture; warn when not static. BINS_OF[ARCH]: the
# binaries of ARCH, one a line.
declare -A seen_bin=() BINS_OF=()
for b in "${TESTBINS[@]}"; do
	[[ -f $b && -x $b ]] || die "test binary '$b' not found or not executable"
	a=$(elf_arch "$b") || die "test binary '$b' is not an ELF file of a known architecture (${KNOWN_ARCHES[*]}; readelf says machine '$a')"
	base=$(basename "$b")
	[[ -z ${seen_bin[$a/$base]:-} ]] || die "two $a test binaries named '$base'"
	seen_bin[$a/$base]=1
	if readelf -lW "$b" | grep -q 'Requesting program interpreter'; then
		warn "$b is dynamically linked; build it with CGO_ENABLED=0"
	fi
	BINS_OF[$a]+="$b"$'\n'
done
# bins_of ARCH: the test binaries of ARCH, one a line.
bins_of() { printf '%s' "${BINS_OF[$1]:-}"; }
if ((PREPARE_ONLY == 0)); then
	for k in "${SELECTED[@]}"; do
		a=${KARCH[$k]}
		[[ -n ${BINS_OF[$a]:-} ]] ||
			die "no $a test binaries for $k (build them with GOARCH=$a CGO_ENABLED=0 go test -c)"
	done
	for a in "${!BINS_OF[@]}"; do
		[[ -n ${ARCH_USED[$a]:-} ]] || say "$a test binaries not run: no $a kernel selected"
	done
fi

mkdir -p "$CACHE"/{apt,debs,kernels,logs,tmp}

# ---------------------------------------------------------------------------
# Kernel download and extraction (cached)
#
# Every kernel is resolved and downloaded through an apt configuration of its
# own, $CACHE/apt/<arch>/<suites>/ (sources list, package lists, apt's caches), and
# never through the system's: the system's apt state is left alone, bullseye
# and sid are suites the system does not list, a broken third-party source on
# the host cannot stop a run, and the lists are refreshed once per run, so a
# kernel is always its suite's current one (stale lists would name versions
# the mirror has already dropped).

# host_codename: print the system's Debian release (bookworm).
host_codename() {
	sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null | tr -d '"'
}

# debian_mirrors: set MIRROR and SECURITY_MIRROR: VMTEST_MIRROR and
# VMTEST_SECURITY_MIRROR, else the URIs the system's apt sources use for its
# own release and that release's -security suite.
debian_mirrors() {
	[[ -n ${MIRROR:-} ]] && return 0
	local codename uri rel
	codename=$(host_codename)
	MIRROR=${VMTEST_MIRROR:-}
	SECURITY_MIRROR=${VMTEST_SECURITY_MIRROR:-}
	if [[ -z $MIRROR || -z $SECURITY_MIRROR ]]; then
		[[ -n $codename ]] || die "no VERSION_CODENAME in /etc/os-release: set VMTEST_MIRROR and VMTEST_SECURITY_MIRROR"
		while read -r uri rel; do
			[[ -z ${VMTEST_MIRROR:-} && $rel == "$codename" ]] && MIRROR=${uri%/}
			[[ -z ${VMTEST_SECURITY_MIRROR:-} && $rel == "$codename-security" ]] && SECURITY_MIRROR=${uri%/}
		done < <(
			# shellcheck disable=SC2016 # apt's own $(...) format fields
			apt-get indextargets --no-release-info --format '$(REPO_URI) $(RELEASE)' 2>/dev/null | sort -u
		)
	fi
	[[ -n $MIRROR ]] || die "the system's apt sources list no '$codename' suite to take the Debian mirror from: set VMTEST_MIRROR (e.g. the URI of your Debian mirror)"
	[[ -n $SECURITY_MIRROR ]] || die "the system's apt sources list no '$codename-security' suite to take the security mirror from: set VMTEST_SECURITY_MIRROR"
}

# iapt TOOL DIR ARGS...: run apt-get or apt-cache with the sources, lists,
# caches and (empty) dpkg status of DIR (made by apt_dir) only, for DIR's
# architecture alone; preferences and pins of the system are ignored. apt.conf.d still applies (proxies), minus its extra
# index targets (DEP-11 metadata, icons, Contents: only Packages is needed)
# and minus a disabled binary cache (docker images disable it; without it
# every apt-cache call parses the lists again, seconds each).
IAPT_NOTARGETS=()
iapt() {
	local tool=$1 dir=$2 t arch=${APT_ARCH_OF[$2]:-}
	[[ -n $arch ]] || die "internal: iapt on $dir, which apt_dir did not set up"
	shift 2
	if ((${#IAPT_NOTARGETS[@]} == 0)); then
		IAPT_NOTARGETS=(-o Acquire::Languages=none)
		while IFS= read -r t; do
			[[ $t == Packages ]] || IAPT_NOTARGETS+=(-o "Acquire::IndexTargets::deb::$t::DefaultEnabled=false")
		done < <(apt-config dump | sed -n 's/^Acquire::IndexTargets::deb::\([^:]*\) "";$/\1/p')
	fi
	"$tool" \
		-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null \
		-o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null \
		-o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o Dir::State::status=/dev/null \
		-o Dir::Cache::pkgcache=pkgcache.bin -o Dir::Cache::srcpkgcache= \
		-o "APT::Architecture=$arch" -o "APT::Architectures=$arch" -o APT::Sandbox::User=root \
		"${IAPT_NOTARGETS[@]}" "$@"
}

# apt_dir SUITES ARCH: set APT_DIR to the apt directory of SUITES
# (comma-separated; NAME-security suites come from the security mirror) for
# the architecture ARCH, writing its sources list and refreshing its package
# lists once per run. A failed refresh is a warning: the lists of an earlier
# run, or the cached kernel, may still do.
declare -A APT_ARCH_OF=()
apt_dir() {
	local suites=$1 arch=$2 s uri
	APT_DIR="$CACHE/apt/$arch/${suites//,/+}"
	[[ -n ${APT_ARCH_OF[$APT_DIR]:-} ]] && return 0
	APT_ARCH_OF[$APT_DIR]=$arch
	debian_mirrors
	mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
	for s in ${suites//,/ }; do
		case $s in
		*-security) uri=$SECURITY_MIRROR ;;
		*) uri=$MIRROR ;;
		esac
		echo "deb [signed-by=$KEYRING] $uri $s main"
	done >"$APT_DIR/sources.list"
	say "apt-get update: $suites, $arch (own lists in $APT_DIR)"
	if ! iapt apt-get "$APT_DIR" -q update >"$APT_DIR/update.log" 2>&1 ||
		grep -q '^[WE]:' "$APT_DIR/update.log"; then
		warn "apt-get update of $suites ($arch) failed or warned (log: $APT_DIR/update.log):"
		grep '^[WE]:' "$APT_DIR/update.log" | sed 's/^/    /' >&2 || true
	fi
}

# resolve_image DIR META SUFFIX: set IMG_PKG and IMG_VER (the linux-image
# package META depends on, plus SUFFIX, at its candidate version) and
# IMG_WANT (package=version words to download): the image, and the packages
# it depends on that carry its kernel release in their name: sid's 7.x
# image is only a shell over linux-binary-<rel> (vmlinuz),
# linux-modules-<rel> and linux-base-<rel> (modules.builtin, config), while
# the bullseye and bookworm images ship everything themselves and depend on
# no such package. Fails (status 1) when apt cannot name them.
resolve_image() {
	local dir=$1 meta=$2 suffix=$3 rel dep ver
	IMG_PKG="" IMG_VER="" IMG_WANT=()
	# (awk reads all its input: an early exit would SIGPIPE apt under pipefail.)
	IMG_PKG=$({ iapt apt-cache "$dir" depends --important "$meta" 2>/dev/null || true; } |
		awk '!found && $1 ~ /^\|?Depends:$/ && $2 ~ /^linux-image-/ {print $2; found = 1}')
	[[ -n $IMG_PKG ]] || return 1
	rel=${IMG_PKG#linux-image-}
	IMG_PKG+=$suffix
	IMG_VER=$(candidate_version "$dir" "$IMG_PKG")
	[[ -n $IMG_VER ]] || return 1
	IMG_WANT=("$IMG_PKG=$IMG_VER")
	while IFS= read -r dep; do
		ver=$(candidate_version "$dir" "$dep")
		[[ -n $ver ]] || die "$IMG_PKG depends on $dep, which apt cannot find"
		IMG_WANT+=("$dep=$ver")
	done < <({ iapt apt-cache "$dir" depends --important "$IMG_PKG" 2>/dev/null || true; } |
		awk -v rel="-$rel" '$1 ~ /^\|?(Pre)?Depends:$/ && $2 ~ /^linux-/ &&
			length($2) > length(rel) && substr($2, length($2) - length(rel) + 1) == rel && !seen[$2]++ {print $2}')
}

# candidate_version DIR PKG
candidate_version() {
	{ iapt apt-cache "$1" policy "$2" 2>/dev/null || true; } |
		awk '!found && $1 == "Candidate:" && $2 != "(none)" {print $2; found = 1}'
}

# read_kernel_env KDIR: set KREL, KMODBASE (the directory whose
# lib/modules/$KREL holds the modules, for depmod -b and modprobe -d),
# KVMLINUZ and KPKGS from KDIR/kernel.env.
read_kernel_env() {
	local k v
	KREL="" KMODBASE="" KVMLINUZ="" KPKGS=""
	while IFS='=' read -r k v; do
		case $k in
		release) KREL=$v ;;
		modbase) KMODBASE="$1/$v" ;;
		vmlinuz) KVMLINUZ="$1/$v" ;;
		packages) KPKGS=$v ;;
		esac
	done <"$1/kernel.env"
	[[ -n $KREL && -d $KMODBASE/lib/modules/$KREL && -f $KVMLINUZ ]] ||
		die "broken kernel cache entry $1 (remove it and run again)"
}

# extract_kernel NAME DEBS KDIR PKGS: unpack every .deb in DEBS into
# KDIR/root, find the release, its modules and vmlinuz, run depmod, write
# kernel.env (PKGS: the package=version words it was made of).
extract_kernel() {
	local name=$1 debs=$2 kdir=$3 pkgs=$4 deb base modbase="" rel="" d n vmlinuz=""
	rm -rf "$kdir" "$kdir.tmp"
	mkdir -p "$kdir.tmp/root"
	for deb in "$debs"/*.deb; do
		dpkg-deb -x "$deb" "$kdir.tmp/root"
	done
	# Modules are under lib/modules/<rel> (bullseye, bookworm) or, in the
	# split packages of merged-/usr Debian (sid), usr/lib/modules/<rel>.
	n=0
	for base in root root/usr; do
		for d in "$kdir.tmp/$base"/lib/modules/*/; do
			[[ -d $d ]] || continue
			n=$((n + 1))
			modbase=$base
			rel=$(basename "$d")
		done
	done
	((n == 1)) || die "$name: expected one lib/modules/<release> or usr/lib/modules/<release> in $pkgs, found $n"
	for vmlinuz in "root/boot/vmlinuz-$rel" "$modbase/lib/modules/$rel/vmlinuz" ""; do
		[[ -n $vmlinuz && -f $kdir.tmp/$vmlinuz ]] && break
	done
	[[ -n $vmlinuz ]] || die "$name: no boot/vmlinuz-$rel or lib/modules/$rel/vmlinuz in $pkgs"
	# Without modules.builtin, a built-in module (ipv6, ...) cannot be told
	# from a missing one.
	[[ -f $kdir.tmp/$modbase/lib/modules/$rel/modules.builtin ]] ||
		die "$name: no lib/modules/$rel/modules.builtin in $pkgs"
	depmod -b "$kdir.tmp/$modbase" "$rel"
	printf 'release=%s\nmodbase=%s\nvmlinuz=%s\npackages=%s\n' "$rel" "$modbase" "$vmlinuz" "$pkgs" \
		>"$kdir.tmp/kernel.env"
	# The one-package layout's marker, so that an older vmtest.sh sharing
	# this cache reuses a bookworm tree instead of extracting it again.
	[[ $modbase != root ]] || echo "$rel" >"$kdir.tmp/.ready"
	mv "$kdir.tmp" "$kdir"
}

# prepare_kernel NAME ARCH SUITES META SUFFIX: sets KDIR (extracted tree),
# KREL, KMODBASE, KVMLINUZ and KPKGS.
prepare_kernel() {
	local name=$1 arch=$2 suites=$3 meta=$4 suffix=$5 current id
	current="$CACHE/kernels/$name.current"
	apt_dir "$suites" "$arch"
	if ! resolve_image "$APT_DIR" "$meta" "$suffix"; then
		if [[ -f $current && -f "$CACHE/kernels/$(cat "$current")/kernel.env" ]]; then
			warn "$name: cannot resolve $meta in $suites with apt; using the cached $(cat "$current")"
			KDIR="$CACHE/kernels/$(cat "$current")"
			read_kernel_env "$KDIR"
			return 0
		fi
		die "$name: cannot resolve $meta${suffix:+ (+$suffix)} in $suites ($arch) with apt (log: $APT_DIR/update.log)"
	fi
	id="${IMG_PKG}_${IMG_VER}"
	KDIR="$CACHE/kernels/$id"
	if [[ ! -f $KDIR/kernel.env ]]; then
		local debs="$CACHE/debs/$id"
		# Caches of the one-package layout kept the image as debs/<id>.deb.
		if [[ ! -d $debs && -f $debs.deb && ${#IMG_WANT[@]} == 1 ]]; then
			mkdir -p "$debs.tmp" && mv "$debs.deb" "$debs.tmp/" && mv "$debs.tmp" "$debs"
		fi
		if [[ ! -d $debs ]]; then
			say "$name: downloading ${IMG_WANT[*]}"
			local dl w got deb
			dl=$(mktemp -d "$CACHE/tmp/dl.XXXXXX")
			(cd "$dl" && iapt apt-get "$APT_DIR" download -q "${IMG_WANT[@]}" >"$dl/.log" 2>&1) || {
				sed 's/^/    /' "$dl/.log" >&2
				rm -rf "$dl"
				die "$name: apt-get download ${IMG_WANT[*]} failed"
			}
			rm -f "$dl/.log"
			for w in "${IMG_WANT[@]}"; do
				got=""
				for deb in "$dl"/*.deb; do
					[[ $(dpkg-deb -f "$deb" Package)=$(dpkg-deb -f "$deb" Version) == "$w" ]] && got=$deb
				done
				[[ -n $got ]] || { rm -rf "$dl"; die "$name: the download of $w gave no matching .deb"; }
			done
			mv "$dl" "$debs"
		else
			say "$name: using cached $(basename "$debs")"
		fi
		say "$name: extracting ${IMG_WANT[*]}"
		extract_kernel "$name" "$debs" "$KDIR" "${IMG_WANT[*]}"
	fi
	read_kernel_env "$KDIR"
	# Drop the previous version of this kernel from the cache.
	if [[ -f $current && $(cat "$current") != "$id" ]]; then
		local old
		old=$(cat "$current")
		say "$name: removing old cache entry $old"
		rm -rf "${CACHE:?}/kernels/$old" "$CACHE/debs/$old" "$CACHE/debs/$old.deb"
	fi
	echo "$id" >"$current"
}

# ---------------------------------------------------------------------------
# Tools of a foreign-architecture guest (cached)
#
# A guest of the host's architecture gets the host's own tools (TOOLS, with
# the libraries ldd names) and busybox. Any other gets them from Debian's
# packages of that architecture: the packages of TOOLS and busybox-static
# and everything they depend on (recursively, every alternative), at the
# candidate versions of the host's release and its -security suite, are
# downloaded to $CACHE/debs/userland-<arch>/<package>_<version>.deb and
# extracted together into $CACHE/userland/<arch>-<hash of that list>/. The
# initramfs takes from there each tool, its program interpreter and the
# libraries it needs (ELF NEEDED entries, transitively; host ldd cannot run
# foreign binaries), so nothing the packages ship but does not run is
# packed.

# tool_package SPEC: print the package of a TOOLS word (name:package[?]).
tool_package() {
	local p=${1#*:}
	echo "${p%\?}"
}

# prepare_userland ARCH: set USERLAND_ROOT to the extracted packages for
# ARCH, USERLAND_DESC to what they are.
prepare_userland() {
	local arch=$1 codename t p v d w deb got dl id root old
	local pkgs=(busybox-static) next=() new=() want=() fetch=()
	local -A have=([busybox-static]=1) ver=() optional=()
	codename=$(host_codename)
	[[ -n $codename ]] || die "no VERSION_CODENAME in /etc/os-release: cannot tell which Debian release to take the $arch tools from"
	apt_dir "$codename,$codename-security" "$arch"
	for t in "${TOOLS[@]}"; do
		p=$(tool_package "$t")
		if [[ $t == *\? ]]; then
			[[ -n ${have[$p]:-} ]] || optional[$p]=1
		else
			unset "optional[$p]"
		fi
		[[ -n ${have[$p]:-} ]] && continue
		have[$p]=1
		pkgs+=("$p")
	done
	while read -r p v; do ver[$p]=$v; done < <(
		{ iapt apt-cache "$APT_DIR" policy "${pkgs[@]}" 2>/dev/null || true; } |
			awk '/^[^ ].*:$/ {p = substr($1, 1, length($1) - 1)} $1 == "Candidate:" && $2 != "(none)" {print p, $2}'
	)
	next=()
	for p in "${pkgs[@]}"; do
		if [[ -n ${ver[$p]:-} ]]; then
			next+=("$p")
		elif [[ -n ${optional[$p]:-} ]]; then
			say "$arch tools: optional package $p is not in $codename for $arch: its tools are left out"
		else
			die "$arch tools: apt finds no package $p in $codename for $arch (log: $APT_DIR/update.log)"
		fi
	done
	pkgs=("${next[@]}")
	# Their dependencies, level by level. (Virtual packages, <name>, have
	# no files; a real package provides them and is a dependency as well.)
	while ((${#next[@]} > 0)); do
		new=()
		while IFS= read -r p; do
			[[ -n ${have[$p]:-} ]] && continue
			have[$p]=1
			new+=("$p")
		done < <({ iapt apt-cache "$APT_DIR" depends --important "${next[@]}" 2>/dev/null || true; } |
			awk '$1 ~ /^\|?(Pre)?Depends:$/ && $2 !~ /^</ {print $2}')
		((${#new[@]} == 0)) && break
		while read -r p v; do ver[$p]=$v; done < <(
			{ iapt apt-cache "$APT_DIR" policy "${new[@]}" 2>/dev/null || true; } |
				awk '/^[^ ].*:$/ {p = substr($1, 1, length($1) - 1)} $1 == "Candidate:" && $2 != "(none)" {print p, $2}'
		)
		for p in "${new[@]}"; do
			[[ -n ${ver[$p]:-} ]] || die "$arch tools: a dependency, $p, has no $arch candidate in $codename"
		done
		pkgs+=("${new[@]}")
		next=("${new[@]}")
	done
	d="$CACHE/debs/userland-$arch"
	mkdir -p "$d"
	for p in "${pkgs[@]}"; do
		want+=("$p=${ver[$p]}")
		[[ -f $d/${p}_${ver[$p]//:/%3a}.deb ]] || fetch+=("$p=${ver[$p]}")
	done
	if ((${#fetch[@]} > 0)); then
		say "$arch tools: downloading ${#fetch[@]} of ${#want[@]} packages"
		dl=$(mktemp -d "$CACHE/tmp/dl.XXXXXX")
		(cd "$dl" && iapt apt-get "$APT_DIR" download -q "${fetch[@]}" >"$dl/.log" 2>&1) || {
			sed 's/^/    /' "$dl/.log" >&2
			rm -rf "$dl"
			die "$arch tools: apt-get download failed (packages: ${fetch[*]})"
		}
		local -A got_of=()
		for deb in "$dl"/*.deb; do
			[[ -f $deb ]] || continue
			got=$(dpkg-deb -f "$deb" Package Version | awk '{v[$1] = $2} END {print v["Package:"] "=" v["Version:"]}')
			got_of[$got]=$deb
		done
		for w in "${fetch[@]}"; do
			[[ -n ${got_of[$w]:-} ]] || { rm -rf "$dl"; die "$arch tools: the download of $w gave no matching .deb"; }
			p=${w%%=*}
			mv "${got_of[$w]}" "$d/${p}_${ver[$p]//:/%3a}.deb"
		done
		rm -rf "$dl"
	fi
	# Versions no longer wanted.
	for deb in "$d"/*.deb; do
		p=$(basename "$deb" .deb)
		[[ -n ${ver[${p%%_*}]:-} && ${p#*_} == "${ver[${p%%_*}]//:/%3a}" ]] || rm -f "$deb"
	done
	id=$(printf '%s\n' "${want[@]}" | sort | sha256sum | cut -c1-16)
	root="$CACHE/userland/$arch-$id"
	if [[ ! -f $root/.ready ]]; then
		say "$arch tools: extracting ${#want[@]} packages"
		rm -rf "$root" "$root.tmp"
		mkdir -p "$root.tmp"
		for w in "${want[@]}"; do
			p=${w%%=*}
			dpkg-deb -x "$d/${p}_${ver[$p]//:/%3a}.deb" "$root.tmp"
		done
		printf '%s\n' "${want[@]}" >"$root.tmp/.ready"
		mv "$root.tmp" "$root"
	fi
	for old in "$CACHE/userland/$arch"-*; do
		[[ $old == "$root" || ! -d $old ]] || rm -rf "$old"
	done
	USERLAND_ROOT=$root
	USERLAND_DESC="${#want[@]} $codename packages"
}

# root_path ROOT PATH: print ROOT/PATH with the symlinks of its last
# component resolved inside ROOT (an absolute target is relative to ROOT);
# fails when it leads nowhere.
root_path() {
	local root=$1 p=$1$2 t n=0
	while [[ -L $p ]]; do
		((n++ < 40)) || return 1
		t=$(readlink "$p")
		if [[ $t == /* ]]; then p=$root$t; else p=$(dirname "$p")/$t; fi
	done
	[[ -f $p ]] || return 1
	echo "$p"
}

# tool_in_root ROOT NAME: print the path, inside ROOT, of the program NAME
# (in usr/sbin, sbin, usr/bin or bin, as root's PATH). A name the host's package makes with
# update-alternatives (traceroute -> traceroute.db) is not in the package:
# then the name the host's link leads to is looked up.
tool_in_root() {
	local root=$1 name=$2 n d h
	local names=("$name")
	if h=$(command -v "$name" 2>/dev/null) && [[ $(readlink -f "$h") == */* ]]; then
		h=$(basename "$(readlink -f "$h")")
		[[ $h == "$name" ]] || names+=("$h")
	fi
	for n in "${names[@]}"; do
		for d in usr/sbin sbin usr/bin bin; do
			if root_path "$root" "/$d/$n" >/dev/null; then
				echo "/$d/$n"
				return 0
			fi
		done
	done
	return 1
}

# copy_foreign STAGE ROOT FILE DEST: copy ROOT/FILE (symlinks resolved
# inside ROOT) to STAGE/DEST, with its program interpreter and the shared
# libraries it needs, transitively, taken from ROOT's library directories
# in the order the guest's ld.so searches them (ARCH_TRIPLET: arch_setup).
copy_foreign() {
	local stage=$1 root=$2 file=$3 dest=$4 src interp so d found lib
	local queue=()
	src=$(root_path "$root" "$file") || die "$file: not in the extracted packages ($root)"
	install -D -m 0755 "$src" "$stage$dest"
	queue=("$src")
	while ((${#queue[@]} > 0)); do
		src=${queue[0]}
		queue=("${queue[@]:1}")
		interp=$(readelf -lW "$src" | sed -n 's/.*Requesting program interpreter: \(.*\)]$/\1/p')
		if [[ -n $interp && ! -e $stage$interp ]]; then
			lib=$(root_path "$root" "$interp") || die "$(basename "$file"): its interpreter $interp is in none of the packages ($root)"
			install -D -m 0755 "$lib" "$stage$interp"
		fi
		while IFS= read -r so; do
			found=""
			for d in "lib/$ARCH_TRIPLET" "usr/lib/$ARCH_TRIPLET" lib usr/lib; do
				if lib=$(root_path "$root" "/$d/$so"); then
					found=$d
					break
				fi
			done
			[[ -n $found ]] || die "$(basename "$file") needs $so, which none of the packages has ($root): a dependency apt does not name?"
			[[ -e $stage/$found/$so ]] && continue
			install -D -m 0644 "$lib" "$stage/$found/$so"
			queue+=("$lib")
		done < <(readelf -dW "$src" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p')
	done
}

# check_kernel_image NAME ARCH IMAGE: fail unless qemu's -kernel can start
# IMAGE. An arm64 kernel built with CONFIG_EFI_ZBOOT is an EFI program that
# decompresses itself ("zimg" at offset 4), which this qemu's -kernel does
# not unpack (Debian 12's 6.1 is a plain Image).
check_kernel_image() {
	[[ $2 == arm64 ]] || return 0
	if [[ $(dd if="$3" bs=1 skip=4 count=4 status=none) == zimg ]]; then
		die "$1: $3 is an EFI zboot image, which qemu's -kernel cannot start here (decompress its payload first)"
	fi
}

# ---------------------------------------------------------------------------
# Initramfs

# copy_with_libs STAGE FILE DEST: copy FILE (dereferenced) to STAGE/DEST and
# its shared libraries to their paths.
copy_with_libs() {
	local stage=$1 file=$2 dest=$3 lib
	install -D -m 0755 "$(readlink -f "$file")" "$stage$dest"
	if ldd "$file" >/dev/null 2>&1; then
		while IFS= read -r lib; do
			[[ -e $stage$lib ]] && continue
			mkdir -p "$stage$(dirname "$lib")"
			cp -L "$lib" "$stage$lib"
		done < <(ldd "$file" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i}')
	fi
}

# pack DIR OUT: newc cpio of DIR, gzipped.
pack() {
	(cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -6 >"$2"
}

# build_common ARCH STAGE OUT: everything but the kernel modules, for ARCH:
# the tools (the host's, or USERLAND_ROOT[ARCH]'s), busybox, the test
# binaries of ARCH.
build_common() {
	local arch=$1 stage=$2 out=$3 t p name opt dest root=""
	[[ $arch == "$HOST_ARCH" ]] || root=${USERLAND_ROOT_OF[$arch]:?}
	arch_setup "$arch"
	mkdir -p "$stage"/{usr/bin,usr/sbin,usr/lib,usr/lib64,etc,root,proc,sys,dev,run,tmp,mnt,var}
	mkdir -p "$stage"/vmtest/{bin,files}
	ln -s usr/bin "$stage/bin"
	ln -s usr/sbin "$stage/sbin"
	ln -s usr/lib "$stage/lib"
	ln -s usr/lib64 "$stage/lib64"
	ln -s ../run "$stage/var/run"
	chmod 1777 "$stage/tmp"

	for t in "${TOOLS[@]}"; do
		opt=0
		[[ $t == *\? ]] && opt=1
		name=${t%%:*}
		if [[ -z $root ]]; then
			if ! p=$(command -v "$name"); then
				((opt)) || die "tool '$name' not found on the host: run scripts/install-deps.sh"
				continue
			fi
		elif ! p=$(tool_in_root "$root" "$name"); then
			((opt)) || die "tool '$name' not found in the $arch packages ($(tool_package "$t"), in $root)"
			say "$arch: optional tool $name is not in its packages: left out"
			continue
		fi
		case $p in
		/sbin/* | /usr/sbin/* | /usr/local/sbin/*) dest=/usr/sbin/$name ;;
		*) dest=/usr/bin/$name ;;
		esac
		if [[ -z $root ]]; then
			copy_with_libs "$stage" "$p" "$dest"
		else
			copy_foreign "$stage" "$root" "$p" "$dest"
		fi
	done
	# A real POSIX sh: busybox's ash runs its own applets (ip, ping, ...)
	# before PATH, so `sh -c 'ip netns ...'` from a test would get busybox's.
	if [[ -x $stage/usr/bin/dash ]]; then
		ln -s dash "$stage/usr/bin/sh"
	fi

	if [[ -z $root ]]; then
		install -m 0755 "$BUSYBOX" "$stage/usr/bin/busybox"
	else
		p=$(tool_in_root "$root" busybox) || die "no busybox in the $arch packages (busybox-static, in $root)"
		copy_foreign "$stage" "$root" "$p" /usr/bin/busybox
	fi
	# Equivalent of `busybox --install -s`, minus applets that would shadow
	# the real tools above. (The host's busybox lists the applets: a
	# foreign one cannot run here, and both are the same Debian release's.)
	while IFS= read -r p; do
		name=${p##*/}
		[[ $name == busybox ]] && continue
		if [[ -e $stage/usr/bin/$name || -e $stage/usr/sbin/$name || -L $stage/usr/bin/$name || -L $stage/usr/sbin/$name ]]; then
			continue
		fi
		case $p in
		bin/* | usr/bin/*) ln -s /usr/bin/busybox "$stage/usr/bin/$name" ;;
		sbin/* | usr/sbin/*) ln -s /usr/bin/busybox "$stage/usr/sbin/$name" ;;
		esac
	done < <("$BUSYBOX" --list-full)

	# Configuration files the real tools read.
	local f
	for f in /etc/protocols /etc/services /etc/ethertypes /etc/iproute2; do
		[[ -e $f ]] && cp -a "$f" "$stage$f"
	done
	[[ -d /usr/share/iproute2 ]] && mkdir -p "$stage/usr/share" && cp -a /usr/share/iproute2 "$stage/usr/share/"
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$stage/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$stage/etc/group"
	printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$stage/etc/hosts"
	echo vmtest >"$stage/etc/hostname"
	: >"$stage/etc/fstab"

	install -m 0755 "$SCRIPTS/vmtest-init.sh" "$stage/init"

	local b
	: >"$stage/vmtest/bins"
	while IFS= read -r b; do
		install -m 0755 "$b" "$stage/vmtest/bin/$(basename "$b")"
		basename "$b" >>"$stage/vmtest/bins"
	done < <(bins_of "$arch")
	local spec src dst
	for spec in "${EXTRA_FILES[@]}"; do
		src=${spec%%:*}
		dst=${spec#*:}
		[[ $spec == *:* ]] || dst="/vmtest/files/$(basename "$src")"
		[[ -e $src ]] || die "extra file '$src' not found"
		[[ $dst == /* ]] || die "guest path '$dst' must be absolute"
		mkdir -p "$stage$(dirname "$dst")"
		cp -a "$src" "$stage$dst"
	done
	{
		echo "-test.timeout=$((TIMEOUT * 2 / 3))s"
		split_words "${VMTEST_ARGS:-}"
	} >"$stage/vmtest/args"
	split_words "${VMTEST_ENV:-}" >"$stage/vmtest/env"
	while IFS= read -r w; do
		[[ $w == [A-Za-z_]*=* ]] || die "VMTEST_ENV word '$w' is not NAME=VALUE"
	done <"$stage/vmtest/env"

	pack "$stage" "$out"
}

# build_kernel_part NAME ARCH MODBASE KREL STAGE OUT: the modules (from
# MODBASE/lib/modules/KREL), the list to load, and the test channel
# (/vmtest/channel: its device, then the modules it needs, loaded first).
# Sets KMODS_COUNT and KMODS_ABSENT (optional modules this kernel does not
# have).
build_kernel_part() {
	local name=$1 arch=$2 modbase=$3 krel=$4 stage=$5 out=$6
	local src="$modbase/lib/modules/$krel" dst="$stage/usr/lib/modules/$krel"
	local m opt chan line f rel load=() chanload=() missing=() all=()
	KMODS_ABSENT=()
	mkdir -p "$dst" "$stage/vmtest"
	for f in modules.builtin modules.builtin.modinfo modules.order; do
		[[ -f $src/$f ]] && cp "$src/$f" "$dst/"
	done
	local extra=()
	read -r -a extra <<<"${VMTEST_MODULES:-}"
	arch_setup "$arch"
	for m in "${ARCH_CHANNEL[@]:1}"; do all+=("@$m"); done
	for m in "${all[@]}" "${MODULES[@]}" "${extra[@]}"; do
		opt=0 chan=0
		[[ $m == @* ]] && chan=1 && m=${m#@}
		[[ $m == *\? ]] && opt=1 && m=${m%\?}
		local out_dep
		if ! out_dep=$(modprobe -d "$modbase" -S "$krel" --show-depends "$m" 2>/dev/null); then
			if ((opt)); then
				KMODS_ABSENT+=("$m")
			else
				missing+=("$m")
			fi
			continue
		fi
		if grep -q "^builtin $m\$" <<<"$out_dep"; then
			continue
		fi
		while read -r line f _; do
			[[ $line == insmod ]] || continue
			rel=${f#"$src"/}
			[[ $rel != "$f" ]] || die "$name: unexpected module path $f"
			[[ -e $dst/$rel || -e $dst/${rel%.xz} || -e $dst/${rel%.zst} ]] && continue
			mkdir -p "$dst/$(dirname "$rel")"
			cp "$f" "$dst/$rel"
			case $rel in
			*.xz) xz -d "$dst/$rel" ;;
			*.zst) zstd -q -d --rm "$dst/$rel" ;;
			*.gz) gzip -d "$dst/$rel" ;;
			esac
		done <<<"$out_dep"
		if ((chan)); then
			chanload+=("$m")
		else
			load+=("$m")
		fi
	done
	((${#missing[@]} == 0)) || die "$name ($krel): required modules not found: ${missing[*]}"
	depmod -b "$stage/usr" "$krel"
	printf '%s\n' "${load[@]}" >"$stage/vmtest/modules"
	printf '%s\n' "${ARCH_CHANNEL[0]}" "${chanload[@]}" >"$stage/vmtest/channel"
	echo "$name" >"$stage/vmtest/kernel"
	KMODS_COUNT=$(find "$dst" -name '*.ko' | wc -l)
	pack "$stage" "$out"
}

# ---------------------------------------------------------------------------
# Result parsing

# hooks_of FILE: distinct VMTEST-HOOKS texts, joined with "; ".
hooks_of() {
	awk 'i = index($0, "VMTEST-HOOKS:") {
		h = substr($0, i + 13); gsub(/^[ \t]+|[ \t]+$/, "", h)
		if (h != "" && !seen[h]++) out = out (out == "" ? "" : "; ") h
	} END {print out}' "$1"
}

fmt_secs() { awk -v ms="$1" 'BEGIN {printf "%.1fs", ms / 1000}'; }
now_ms() { date +%s%3N; }

# ---------------------------------------------------------------------------
# Main

LOCK="$CACHE/lock"
exec 9>"$LOCK"
if ! flock -n 9; then
	say "waiting for another vmtest run to finish preparing the cache"
	flock 9
fi
declare -A KMB=() KR=() KVZ=() PREP_MS=() USERLAND_ROOT_OF=()
for k in "${SELECTED[@]}"; do
	kernel_line "$k"
	t0=$(now_ms)
	prepare_kernel "${KLINE[0]}" "${KLINE[1]}" "${KLINE[2]}" "${KLINE[3]}" "${KLINE[4]:-}"
	check_kernel_image "$k" "${KLINE[1]}" "$KVMLINUZ"
	KMB[$k]=$KMODBASE
	KR[$k]=$KREL
	KVZ[$k]=$KVMLINUZ
	PREP_MS[$k]=$(($(now_ms) - t0))
	say "$k: kernel $KREL ($KPKGS) ready in $(fmt_secs "${PREP_MS[$k]}")"
done
for a in "${!ARCH_USED[@]}"; do
	[[ $a != "$HOST_ARCH" ]] || continue
	t0=$(now_ms)
	prepare_userland "$a"
	USERLAND_ROOT_OF[$a]=$USERLAND_ROOT
	say "$a tools: $USERLAND_DESC ready in $(fmt_secs $(($(now_ms) - t0)))"
done
flock -u 9

if ((PREPARE_ONLY)); then
	say "prepared: ${SELECTED[*]}"
	exit 0
fi

WORK=$(mktemp -d "$CACHE/tmp/run.XXXXXX")
cleanup() {
	if [[ ${VMTEST_KEEP:-0} == 1 ]]; then
		say "work directory kept: $WORK"
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Leftovers of runs that were killed.
find "$CACHE/tmp" -mindepth 1 -maxdepth 1 -mmin +720 -exec rm -rf {} + 2>/dev/null || true

# The common part of each architecture's initramfs, made when its first
# kernel comes.
declare -A COMMON_OF=()

TOTAL_PASS=0 TOTAL_FAIL=0 TOTAL_SKIP=0
OK_KERNELS=() FAILED_KERNELS=()
RESULT_LINES=()
for k in "${SELECTED[@]}"; do
	krel=${KR[$k]} kvmlinuz=${KVZ[$k]} arch=${KARCH[$k]}
	mapfile -t bins < <(bins_of "$arch")
	# Written in the run's own directory (other runs may share the cache),
	# copied to logs/ when the kernel is done.
	log="$WORK/$k.log"
	out="$WORK/$k.out"

	if [[ -z ${COMMON_OF[$arch]:-} ]]; then
		t0=$(now_ms)
		COMMON_OF[$arch]="$WORK/common-$arch.cpio.gz"
		build_common "$arch" "$WORK/common-$arch" "${COMMON_OF[$arch]}"
		say "$arch common initramfs: $(du -h "${COMMON_OF[$arch]}" | cut -f1) (${#bins[@]} test binaries) in $(fmt_secs $(($(now_ms) - t0)))"
	fi
	t0=$(now_ms)
	build_kernel_part "$k" "$arch" "${KMB[$k]}" "$krel" "$WORK/k-$k" "$WORK/k-$k.cpio.gz"
	cat "${COMMON_OF[$arch]}" "$WORK/k-$k.cpio.gz" >"$WORK/init-$k.cpio.gz"
	build_ms=$(($(now_ms) - t0))
	say "$k: initramfs $(du -h "$WORK/init-$k.cpio.gz" | cut -f1) with $KMODS_COUNT modules in $(fmt_secs "$build_ms")"
	((${#KMODS_ABSENT[@]} == 0)) || say "$k: optional modules this kernel does not have: ${KMODS_ABSENT[*]}"

	say "$k: booting $krel ($arch, timeout ${TIMEOUT}s), console log $CACHE/logs/$k.log"
	echo "----- vmtest $k console -----"
	t0=$(now_ms)
	# A guest that panics before reaching /init (seen rarely under TCG:
	# an int3 oops while the kernel patches its own text at boot) is booted
	# once more. After /init, an oops (oops=panic) also gets one more run:
	# the kernel patching ftrace call sites when a hook is detached, racing
	# a CPU that runs the function, crashed the guest under TCG (6.12: an
	# "Oops: int3" at nf_ct_destroy+0x5; 6.1: a call to NULL from
	# nf_ct_iterate_cleanup), both while the exactness test detached its
	# hooks during a netns cleanup. Every retry is said in the summary; a
	# second panic fails the kernel.
	qemu_args "$arch" "$kvmlinuz" "$WORK/init-$k.cpio.gz" "$out"
	retried=""
	for attempt in 1 2; do
		set +e
		timeout -k 10 "$TIMEOUT" "$ARCH_QEMU" "${QEMU_ARGS[@]}" \
			</dev/null 2>&1 | tr -d '\r' | sed -u 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g' | tee "$log"
		qrc=${PIPESTATUS[0]}
		set -e
		if ((attempt == 1)) && ! grep -aq '##vmtest## kernel ' "$log" "$out" 2>/dev/null &&
			grep -aq 'Kernel panic' "$log"; then
			cp "$log" "$CACHE/logs/$k.panic.log"
			warn "$k: kernel panicked before /init (log: $CACHE/logs/$k.panic.log); booting it again"
			retried=" (booted twice: a panic before /init)"
			continue
		fi
		if ((attempt == 1)) && grep -aq 'Kernel panic' "$log"; then
			cp "$log" "$CACHE/logs/$k.panic.log"
			oops=$(grep -a -m 1 -E 'Oops|BUG:' "$log" | sed 's/^\[[ 0-9.]*\] //')
			warn "$k: kernel oops after /init ($oops; log: $CACHE/logs/$k.panic.log); running it again"
			retried=" (run twice: a kernel oops in the first run: $oops; $CACHE/logs/$k.panic.log)"
			continue
		fi
		break
	done
	echo "----- vmtest $k end of console -----"
	run_ms=$(($(now_ms) - t0))
	for f in log out; do
		[[ -f $WORK/$k.$f ]] || : >"$WORK/$k.$f"
		cp "$WORK/$k.$f" "$CACHE/logs/.$k.$f.$$" && mv -f "$CACHE/logs/.$k.$f.$$" "$CACHE/logs/$k.$f"
	done
	log="$CACHE/logs/$k.log"

	# Parse the clean test channel (ARCH_CHANNEL); fall back to the console log.
	res="$WORK/$k.result"
	if [[ -s $out ]]; then
		tr -d '\r' <"$out" >"$res"
	else
		cp "$log" "$res"
	fi

	reasons=()
	if ((qrc == 124 || qrc == 137)); then
		reasons+=("timed out after ${TIMEOUT}s")
	elif ((qrc != 0)); then
		reasons+=("qemu exited with status $qrc")
	fi
	booted=1
	urel=$(sed -n 's/.*##vmtest## kernel .*release=\([^ ]*\).*/\1/p' "$res" | sed -n 1p)
	uptime=$(sed -n 's/.*##vmtest## kernel .*uptime=\([0-9.]*\).*/\1/p' "$res" | sed -n 1p)
	if [[ -z $urel ]]; then
		booted=0
		reasons+=("guest did not boot to /init (see $log)")
		grep -q 'Kernel panic' "$log" && reasons+=("kernel panic (see $log)")
		urel=$krel
	fi
	while IFS= read -r line; do
		reasons+=("guest setup: ${line#\#\#vmtest\#\# setup-error }")
	done < <(grep -a '^##vmtest## setup-error ' "$res" || true)
	if ((booted)); then
		for b in "${bins[@]}"; do
			b=$(basename "$b")
			st=$(awk -v m="##vmtest## end bin=$b status=" 'index($0, m) == 1 && st == "" {st = substr($0, length(m) + 1)} END {print st}' "$res")
			if [[ $st =~ ^[0-9]+$ ]]; then
				((st == 0)) || reasons+=("$b exited with status $st")
			elif grep -aqxF "##vmtest## begin bin=$b" "$res"; then
				reasons+=("$b did not finish")
			else
				reasons+=("$b did not start")
			fi
		done
		grep -aqx '##vmtest## done' "$res" || reasons+=("guest did not finish the run")
		while IFS= read -r line; do
			reasons+=("guest kernel: $line")
		done < <(grep -a -m 3 -E 'Oops|BUG:|Kernel panic|hung_task|soft lockup|rcu_.* stall' "$log" || true)
	fi

	npass=$(grep -ac '^--- PASS: ' "$res" || true)
	nfail=$(grep -ac '^--- FAIL: ' "$res" || true)
	nskip=$(grep -ac '^--- SKIP: ' "$res" || true)
	((npass + nfail > 0)) || reasons+=("no test ran")
	hooks=$(hooks_of "$res")
	[[ -n $hooks ]] || hooks=unknown

	TOTAL_PASS=$((TOTAL_PASS + npass))
	TOTAL_FAIL=$((TOTAL_FAIL + nfail))
	TOTAL_SKIP=$((TOTAL_SKIP + nskip))
	say "$k: prepare $(fmt_secs "${PREP_MS[$k]}"), initramfs $(fmt_secs "$build_ms"), boot+test $(fmt_secs "$run_ms") (guest reached /init at ${uptime:-?}s uptime); $nskip tests skipped"
	mods=$(sed -n 's/^vmtest-init: modules loaded: *//p' "$res" | sed -n 1p)
	((booted)) && say "$k: modules loaded in the guest: ${mods:-none}"
	# Failed top-level tests, for the CI log.
	grep -a '^--- FAIL: ' "$res" | sed "s/^/vmtest: $k: /" || true
	line="vmtest $k ($urel, $arch): hooks $hooks: $npass passed, $nfail failed$retried"
	echo "$line"
	RESULT_LINES+=("$line")
	if ((${#reasons[@]} > 0 || nfail > 0)); then
		((${#reasons[@]} > 0)) || reasons+=("$nfail tests failed")
		for r in "${reasons[@]}"; do say "$k FAILED: $r"; done
		FAILED_KERNELS+=("$k")
	else
		OK_KERNELS+=("$k")
	fi
done

echo
say "summary:"
for line in "${RESULT_LINES[@]}"; do echo "  $line"; done
say "kernels ok: ${OK_KERNELS[*]:-none}; failed: ${FAILED_KERNELS[*]:-none}"
echo "vmtest: $TOTAL_PASS passed, $TOTAL_FAIL failed, $TOTAL_SKIP skipped"
((${#FAILED_KERNELS[@]} == 0))
