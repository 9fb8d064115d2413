#!/bin/busybox sh
# shellcheck shell=dash
# vmtest guest /init (PID 1), packed into the initramfs by scripts/vmtest.sh.
#
# Mounts the usual filesystems, loads the modules listed in /vmtest/modules,
# runs every binary listed in /vmtest/bins as
#   BIN -test.v -test.count=1 [args from /vmtest/args]
# with CTAGENT_VMTEST=1 and CTAGENT_KERNEL=<name>, then powers off.
# Lines starting with "##vmtest## " are markers read by vmtest.sh. Everything
# also goes to the test channel, a port that is a file on the host, so the
# host can parse test output that kernel messages did not interleave:
# /vmtest/channel names its device (/dev/ttyS1 on x86, /dev/hvc0 on arm64),
# then the modules it needs, loaded first.
#
# PID 1 must never exit: no `set -e`, and a loop at the end.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TMPDIR=/tmp TERM=dumb LANG=C.UTF-8

BB=/usr/bin/busybox
OUT=/dev/null

mark() {
	echo "##vmtest## $*"
	echo "##vmtest## $*" >>"$OUT"
}
log() {
	echo "vmtest-init: $*"
	echo "vmtest-init: $*" >>"$OUT"
}
setup_error() {
	mark "setup-error $*"
}

mnt() { # TYPE DIR [OPTIONS]
	$BB mkdir -p "$2"
	if [ -n "$3" ]; then
		$BB mount -t "$1" -o "$3" "$1" "$2" || setup_error "mount -t $1 $2 failed"
	else
		$BB mount -t "$1" "$1" "$2" || setup_error "mount -t $1 $2 failed"
	fi
}

finish() {
	mark "done"
	$BB sync
	# Let the UARTs drain before the power goes.
	$BB sleep 1
	$BB poweroff -f
	while :; do $BB sleep 3600; done
}

mnt proc /proc
mnt sysfs /sys
mnt devtmpfs /dev
mnt devpts /dev/pts
mnt tmpfs /dev/shm mode=1777
mnt tmpfs /run mode=0755
mnt tmpfs /tmp mode=1777
mnt bpf /sys/fs/bpf
mnt tracefs /sys/kernel/tracing
mnt debugfs /sys/kernel/debug
mnt cgroup2 /sys/fs/cgroup

CHANNEL=/dev/ttyS1
CHANNEL_ERRORS=""
if [ -f /vmtest/channel ]; then
	{
		read -r CHANNEL
		while read -r m; do
			[ -n "$m" ] || continue
			$BB modprobe "$m" || CHANNEL_ERRORS="$CHANNEL_ERRORS modprobe $m failed;"
		done
	} </vmtest/channel
fi
# A driver's device node can come a moment after its modprobe returns.
i=0
while [ ! -c "$CHANNEL" ] && [ $i -lt 50 ]; do
	$BB usleep 100000
	i=$((i + 1))
done
if [ -c "$CHANNEL" ] && $BB stty -F "$CHANNEL" raw -echo clocal 2>/dev/null; then
	OUT=$CHANNEL
else
	CHANNEL_ERRORS="$CHANNEL_ERRORS test channel $CHANNEL not usable, output only on the console;"
fi

KERNEL=$($BB cat /vmtest/kernel 2>/dev/null)
[ -n "$KERNEL" ] || KERNEL=unknown
export CTAGENT_VMTEST=1 CTAGENT_KERNEL="$KERNEL"
mark "kernel name=$KERNEL release=$($BB uname -r) uptime=$($BB cut -d' ' -f1 /proc/uptime)"
[ -z "$CHANNEL_ERRORS" ] || setup_error "$CHANNEL_ERRORS"

$BB hostname vmtest
# The real ip (busybox's ash would run its own applet for a bare `ip`).
IP=/usr/sbin/ip
[ -x $IP ] || IP=/usr/bin/ip
$IP link set lo up || setup_error "$IP link set lo up failed"

while read -r m; do
	[ -n "$m" ] || continue
	if ! $BB modprobe "$m"; then
		setup_error "modprobe $m failed"
	elif [ ! -e "/sys/module/$m" ]; then
		setup_error "module $m not loaded after modprobe"
	fi
done </vmtest/modules
log "modules loaded: $($BB cut -d' ' -f1 /proc/modules | $BB sort | $BB tr '\n' ' ')"

# Extra guest environment (NAME=VALUE lines).
while IFS= read -r kv; do
	# shellcheck disable=SC2163 # NAME=VALUE words
	[ -n "$kv" ] && export "$kv"
done </vmtest/env

$BB mkdir -p /vmtest/files
cd /vmtest/files || setup_error "cd /vmtest/files failed"

while read -r bin; do
	[ -n "$bin" ] || continue
	set -- -test.v -test.count=1
	while IFS= read -r a; do
		set -- "$@" "$a"
	done </vmtest/args
	mark "begin bin=$bin"
	$BB rm -f /tmp/.vmtest-rc
	{
		/vmtest/bin/"$bin" "$@" </dev/null 2>&1
		echo $? >/tmp/.vmtest-rc
	} | $BB tee -a "$OUT"
	rc=$($BB cat /tmp/.vmtest-rc 2>/dev/null)
	[ -n "$rc" ] || rc=255
	mark "end bin=$bin status=$rc"
done </vmtest/bins

finish
