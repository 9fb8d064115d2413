#!/usr/bin/env bash
# vmtest.sh: run static Go test binaries inside real Debian kernels under qemu.
#
# Usage: scripts/vmtest.sh [-k KERNEL_NAME]... [-f SRC[:DST]]... [-p] [-l] TESTBIN...
#
#   TESTBIN    static Go test binary (CGO_ENABLED=0 go test -c -o X ./pkg/...);
#              run in the guest as `TESTBIN -test.v -test.count=1 $VMTEST_ARGS`
#              with the current directory /vmtest/files.
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
#   VMTEST_TIMEOUT  per-kernel boot+test timeout in seconds (default 900)
#   VMTEST_MEM      guest memory in MiB (default 2048)
#   VMTEST_SMP      guest CPUs (default 2)
#   VMTEST_CACHE    cache directory (default <repo>/.cache/vmtest)
#   VMTEST_MIRROR, VMTEST_SECURITY_MIRROR
#                   Debian mirror URIs for the kernel suites (default: the
#                   ones the system's apt sources use for its own release)
#   VMTEST_KEEP=1   keep the per-run work directory (initramfs images)
#
# Exit status: 0 when every selected kernel booted, every test binary exited 0
# and at least one test ran; 1 otherwise; 2 on usage or setup errors.
#
# Per kernel it prints one result line
#   vmtest <name> (<uname -r>): hooks <text>: N passed, N failed
# and at the end a total line `vmtest: N passed, N failed`.
set -euo pipefail

# ---------------------------------------------------------------------------
# Kernels: NAME  SUITES  META-PACKAGE  [DOWNLOAD-SUFFIX]
# SUITES: the Debian suites (comma-separated) the kernel comes from, read with
# an apt configuration of their own (see "Kernel download" below). The meta
# package is resolved with `apt-cache depends` in them at run time, so each
# run takes the current version; the optional suffix is appended to the
# resolved package name for the download (Debian 12's 6.12 kernel is fetched
# as the `-unsigned` package).
KERNELS=(
	"debian-5.10  bullseye,bullseye-security  linux-image-cloud-amd64"
	"debian-6.1   bookworm,bookworm-security  linux-image-cloud-amd64"
	"debian-6.12  bookworm,bookworm-security  linux-image-6.12-cloud-amd64  -unsigned"
	"debian-sid   sid                         linux-image-cloud-amd64"
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

# Real (dynamically linked) tools copied with their libraries; they replace
# busybox's applets of the same name. `?` marks optional ones.
TOOLS=(ip nft conntrack ping traceroute ss? tc? bpftool? dash?)
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
TIMEOUT=${VMTEST_TIMEOUT:-900}
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

need=(apt-cache apt-get apt-config dpkg-deb depmod modprobe cpio gzip xz ldd timeout flock xargs)
((PREPARE_ONLY)) || need+=(qemu-system-x86_64)
for c in "${need[@]}"; do
	command -v "$c" >/dev/null || die "'$c' not found: run scripts/install-deps.sh"
done
[[ -x $BUSYBOX ]] || die "$BUSYBOX not found: run scripts/install-deps.sh (busybox-static)"
[[ -f $KEYRING ]] || die "$KEYRING not found: run scripts/install-deps.sh (debian-archive-keyring)"

# Test binaries: must exist; warn when not static.
declare -A seen_bin=()
for b in "${TESTBINS[@]}"; do
	[[ -f $b && -x $b ]] || die "test binary '$b' not found or not executable"
	base=$(basename "$b")
	[[ -z ${seen_bin[$base]:-} ]] || die "two test binaries named '$base'"
	seen_bin[$base]=1
	if ldd "$b" >/dev/null 2>&1; then
		warn "$b is dynamically linked; build it with CGO_ENABLED=0"
	fi
done

mkdir -p "$CACHE"/{apt,debs,kernels,logs,tmp}

# ---------------------------------------------------------------------------
# Kernel download and extraction (cached)
#
# Every kernel is resolved and downloaded through an apt configuration of its
# own, $CACHE/apt/<suites>/ (sources list, package lists, apt's caches), and
# never through the system's: the system's apt state is left alone, bullseye
# and sid are suites the system does not list, a broken third-party source on
# the host cannot stop a run, and the lists are refreshed once per run, so a
# kernel is always its suite's current one (stale lists would name versions
# the mirror has already dropped).

# debian_mirrors: set MIRROR and SECURITY_MIRROR: VMTEST_MIRROR and
# VMTEST_SECURITY_MIRROR, else the URIs the system's apt sources use for its
# own release and that release's -security suite.
debian_mirrors() {
	[[ -n ${MIRROR:-} ]] && return 0
	local codename uri rel
	codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null | tr -d '"')
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
# caches and (empty) dpkg status of DIR only; preferences and pins of the
# system are ignored. apt.conf.d still applies (proxies), minus its extra
# index targets (DEP-11 metadata, icons, Contents: only Packages is needed)
# and minus a disabled binary cache (docker images disable it; without it
# every apt-cache call parses the lists again, seconds each).
IAPT_NOTARGETS=()
iapt() {
	local tool=$1 dir=$2 t
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
		-o APT::Architecture=amd64 -o APT::Architectures=amd64 -o APT::Sandbox::User=root \
		"${IAPT_NOTARGETS[@]}" "$@"
}

# apt_dir SUITES: set APT_DIR to the apt directory of SUITES (comma-separated;
# NAME-security suites come from the security mirror), writing its sources
# list and refreshing its package lists once per run. A failed refresh is a
# warning: the lists of an earlier run, or the cached kernel, may still do.
declare -A APT_REFRESHED=()
apt_dir() {
	local suites=$1 s uri
	APT_DIR="$CACHE/apt/${suites//,/+}"
	[[ -n ${APT_REFRESHED[$suites]:-} ]] && return 0
	APT_REFRESHED[$suites]=1
	debian_mirrors
	mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
	for s in ${suites//,/ }; do
		case $s in
		*-security) uri=$SECURITY_MIRROR ;;
		*) uri=$MIRROR ;;
		esac
		echo "deb [signed-by=$KEYRING] $uri $s main"
	done >"$APT_DIR/sources.list"
	say "apt-get update: $suites (own lists in $APT_DIR)"
	if ! iapt apt-get "$APT_DIR" -q update >"$APT_DIR/update.log" 2>&1 ||
		grep -q '^[WE]:' "$APT_DIR/update.log"; then
		warn "apt-get update of $suites failed or warned (log: $APT_DIR/update.log):"
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

# prepare_kernel NAME SUITES META SUFFIX: sets KDIR (extracted tree), KREL,
# KMODBASE, KVMLINUZ and KPKGS.
prepare_kernel() {
	local name=$1 suites=$2 meta=$3 suffix=$4 current id
	current="$CACHE/kernels/$name.current"
	apt_dir "$suites"
	if ! resolve_image "$APT_DIR" "$meta" "$suffix"; then
		if [[ -f $current && -f "$CACHE/kernels/$(cat "$current")/kernel.env" ]]; then
			warn "$name: cannot resolve $meta in $suites with apt; using the cached $(cat "$current")"
			KDIR="$CACHE/kernels/$(cat "$current")"
			read_kernel_env "$KDIR"
			return 0
		fi
		die "$name: cannot resolve $meta${suffix:+ (+$suffix)} in $suites with apt (log: $APT_DIR/update.log)"
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

# build_common STAGE OUT: everything but the kernel modules.
build_common() {
	local stage=$1 out=$2 t p name opt
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
		[[ $t == *\? ]] && opt=1 && t=${t%\?}
		if ! p=$(command -v "$t"); then
			((opt)) || die "tool '$t' not found on the host: run scripts/install-deps.sh"
			continue
		fi
		case $p in
		/sbin/* | /usr/sbin/* | /usr/local/sbin/*) copy_with_libs "$stage" "$p" "/usr/sbin/$t" ;;
		*) copy_with_libs "$stage" "$p" "/usr/bin/$t" ;;
		esac
	done
	# A real POSIX sh: busybox's ash runs its own applets (ip, ping, ...)
	# before PATH, so `sh -c 'ip netns ...'` from a test would get busybox's.
	if [[ -x $stage/usr/bin/dash ]]; then
		ln -s dash "$stage/usr/bin/sh"
	fi

	install -m 0755 "$BUSYBOX" "$stage/usr/bin/busybox"
	# Equivalent of `busybox --install -s`, minus applets that would shadow
	# the real tools above.
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
	for b in "${TESTBINS[@]}"; do
		install -m 0755 "$b" "$stage/vmtest/bin/$(basename "$b")"
		basename "$b" >>"$stage/vmtest/bins"
	done
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
	split_words "${VMTEST_ARGS:-}" >"$stage/vmtest/args"
	split_words "${VMTEST_ENV:-}" >"$stage/vmtest/env"
	while IFS= read -r w; do
		[[ $w == [A-Za-z_]*=* ]] || die "VMTEST_ENV word '$w' is not NAME=VALUE"
	done <"$stage/vmtest/env"

	pack "$stage" "$out"
}

# build_kernel_part NAME MODBASE KREL STAGE OUT: the modules (from
# MODBASE/lib/modules/KREL) and the list to load. Sets KMODS_COUNT and
# KMODS_ABSENT (optional modules this kernel does not have).
build_kernel_part() {
	local name=$1 modbase=$2 krel=$3 stage=$4 out=$5
	local src="$modbase/lib/modules/$krel" dst="$stage/usr/lib/modules/$krel"
	local m opt line f rel load=() missing=()
	KMODS_ABSENT=()
	mkdir -p "$dst" "$stage/vmtest"
	for f in modules.builtin modules.builtin.modinfo modules.order; do
		[[ -f $src/$f ]] && cp "$src/$f" "$dst/"
	done
	local extra=()
	read -r -a extra <<<"${VMTEST_MODULES:-}"
	for m in "${MODULES[@]}" "${extra[@]}"; do
		opt=0
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
		load+=("$m")
	done
	((${#missing[@]} == 0)) || die "$name ($krel): required modules not found: ${missing[*]}"
	depmod -b "$stage/usr" "$krel"
	printf '%s\n' "${load[@]}" >"$stage/vmtest/modules"
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
declare -A KMB=() KR=() KVZ=() PREP_MS=()
for k in "${SELECTED[@]}"; do
	for l in "${KERNELS[@]}"; do
		read -r -a f <<<"$l"
		[[ ${f[0]} == "$k" ]] || continue
		((${#f[@]} == 3 || ${#f[@]} == 4)) || die "KERNELS line '$l': want NAME SUITES META [SUFFIX]"
		t0=$(now_ms)
		prepare_kernel "${f[0]}" "${f[1]}" "${f[2]}" "${f[3]:-}"
		KMB[$k]=$KMODBASE
		KR[$k]=$KREL
		KVZ[$k]=$KVMLINUZ
		PREP_MS[$k]=$(($(now_ms) - t0))
		say "$k: kernel $KREL ($KPKGS) ready in $(fmt_secs "${PREP_MS[$k]}")"
	done
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

t0=$(now_ms)
build_common "$WORK/common" "$WORK/common.cpio.gz"
say "common initramfs: $(du -h "$WORK/common.cpio.gz" | cut -f1) (${#TESTBINS[@]} test binaries) in $(fmt_secs $(($(now_ms) - t0)))"

TOTAL_PASS=0 TOTAL_FAIL=0 TOTAL_SKIP=0
OK_KERNELS=() FAILED_KERNELS=()
RESULT_LINES=()
for k in "${SELECTED[@]}"; do
	krel=${KR[$k]} kvmlinuz=${KVZ[$k]}
	# Written in the run's own directory (other runs may share the cache),
	# copied to logs/ when the kernel is done.
	log="$WORK/$k.log"
	out="$WORK/$k.out"

	t0=$(now_ms)
	build_kernel_part "$k" "${KMB[$k]}" "$krel" "$WORK/k-$k" "$WORK/k-$k.cpio.gz"
	cat "$WORK/common.cpio.gz" "$WORK/k-$k.cpio.gz" >"$WORK/init-$k.cpio.gz"
	build_ms=$(($(now_ms) - t0))
	say "$k: initramfs $(du -h "$WORK/init-$k.cpio.gz" | cut -f1) with $KMODS_COUNT modules in $(fmt_secs "$build_ms")"
	((${#KMODS_ABSENT[@]} == 0)) || say "$k: optional modules this kernel does not have: ${KMODS_ABSENT[*]}"

	say "$k: booting $krel (timeout ${TIMEOUT}s), console log $CACHE/logs/$k.log"
	echo "----- vmtest $k console -----"
	t0=$(now_ms)
	# A guest that panics before reaching /init (seen rarely under TCG:
	# an int3 oops while the kernel patches its own text at boot) is booted
	# once more; anything after /init is never retried.
	for attempt in 1 2; do
		set +e
		timeout -k 10 "$TIMEOUT" qemu-system-x86_64 \
			-accel tcg -cpu max -m "$MEM" -smp "$SMP" -nographic -no-reboot -nic none \
			-monitor none -serial stdio -serial "file:$out" \
			-kernel "$kvmlinuz" -initrd "$WORK/init-$k.cpio.gz" \
			-append "console=ttyS0 panic=-1 quiet" \
			</dev/null 2>&1 | tr -d '\r' | sed -u 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g' | tee "$log"
		qrc=${PIPESTATUS[0]}
		set -e
		if ((attempt == 1)) && ! grep -aq '##vmtest## kernel ' "$log" "$out" 2>/dev/null &&
			grep -aq 'Kernel panic' "$log"; then
			cp "$log" "$CACHE/logs/$k.panic.log"
			warn "$k: kernel panicked before /init (log: $CACHE/logs/$k.panic.log); booting it again"
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

	# Parse the clean test channel (ttyS1); fall back to the console log.
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
		for b in "${TESTBINS[@]}"; do
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
	line="vmtest $k ($urel): hooks $hooks: $npass passed, $nfail failed"
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
