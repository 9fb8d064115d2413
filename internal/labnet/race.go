package labnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// ClashResult is what UDPClash measured.
type ClashResult struct {
	Iterations int
	// Before and After are n's conntrack -S (ctnetlink statistics, summed
	// over CPUs) around the iterations.
	Before, After map[string]uint64
	// Entries is n's nf_conntrack_count after the last iteration.
	Entries uint64
	// Refused counts datagrams whose send failed with EPERM: conntrack
	// dropped them (NF_DROP in __nf_conntrack_confirm: insert_failed).
	Refused int
}

// Delta is the change of the statistic key (a conntrack -S name) over the
// run; ok is false when the kernel does not report key.
func (r ClashResult) Delta(key string) (d uint64, ok bool) { return statDelta(r.Before, r.After, key) }

// Clashes is the number of datagrams that lost the insert race in
// __nf_conntrack_confirm, per the kernel: clash_resolve (the loser was
// merged into the winner's entry, nf_ct_resolve_clash) plus insert_failed
// (the loser was dropped). clash_resolve exists since Linux 5.10 (commit
// "netfilter: conntrack: add clash resolution stat counter", in ctnetlink
// as CTA_STATS_CLASH_RESOLVE and in /proc/net/stat/nf_conntrack as the
// column clashres, which used to be searched); before it, insert_failed
// counted resolved clashes too, so it alone is the number of clashes.
func (r ClashResult) Clashes() uint64 {
	resolved, _ := r.Delta("clash_resolve")
	failed, _ := r.Delta("insert_failed")
	return resolved + failed
}

const (
	clashPort      = 53    // the datagrams' destination port, as for DNS
	clashFirstPort = 10000 // source port of iteration 0; iteration i uses clashFirstPort+i
)

// UDPClash provokes the UDP insert clash behind the DNS "5 s delay":
// iterations times, a new connected UDP socket in n (bound to its own
// source port, so each iteration is a new flow 127.0.0.1:10000+i ->
// 127.0.0.1:53) is shared by two threads pinned to two CPUs, which leave a
// spin barrier together and send one datagram each. When both datagrams
// pass nf_conntrack_in (OUTPUT) before either is confirmed (POSTROUTING),
// each carries an unconfirmed entry for the same tuple; the second to take
// the bucket lock in __nf_conntrack_confirm clashes, and the kernel merges
// it into the first (clash_resolve) or drops it (insert_failed). Either
// way each iteration leaves one entry. Whether the two meet in that window
// is a race: ClashResult holds the kernel's counts, not an assumption.
//
// n needs conntrack hooks (EnableConntrack). UDPClash sets n's
// net.netfilter.nf_conntrack_udp_timeout to 3600 so that no entry expires
// during the run, and listens on 127.0.0.1:53 in n (discarding what
// arrives, so that no ICMP error fails a send) until t ends.
func (n *NS) UDPClash(iterations int) ClashResult {
	n.t.Helper()
	if iterations < 1 || clashFirstPort+iterations > 65536 {
		n.t.Fatalf("labnet: UDPClash: %d iterations, want 1..%d", iterations, 65536-clashFirstPort)
	}
	n.Sysctl("net.netfilter.nf_conntrack_udp_timeout", "3600")
	n.udpSink(clashPort)

	res := ClashResult{Iterations: iterations, Before: n.CTStats()}
	fd := -1
	err := n.run(race{
		iterations: iterations,
		prepare: func(i int) error {
			var err error
			fd, err = udpSocket(clashFirstPort+i, clashPort)
			return err
		},
		act: func(side, i int) error {
			_, err := unix.Write(fd, []byte{'q', byte(side)})
			return err
		},
		finish: func(i int, errs [2]error) error {
			closeErr := unix.Close(fd)
			fd = -1
			for side, err := range errs {
				switch {
				case err == nil:
				case errors.Is(err, unix.EPERM):
					res.Refused++
				default:
					return fmt.Errorf("side %d: send: %w", side, err)
				}
			}
			if closeErr != nil {
				return fmt.Errorf("close: %w", closeErr)
			}
			return nil
		},
		teardown: func(side int) {
			if side == 0 && fd >= 0 {
				unix.Close(fd)
			}
		},
	})
	if err != nil {
		n.t.Fatalf("labnet: UDPClash: %v", err)
	}
	res.After = n.CTStats()
	res.Entries = n.ConntrackCount()
	return res
}

// udpSink listens on 127.0.0.1:port in n and discards what arrives, so
// that datagrams sent there get no ICMP port unreachable (which would fail
// the next send on a connected socket with ECONNREFUSED). It stops in
// t.Cleanup.
func (n *NS) udpSink(port int) {
	n.t.Helper()
	var pc net.PacketConn
	if err := n.Do(func() (err error) {
		pc, err = net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", port))
		return err
	}); err != nil {
		n.t.Fatalf("netns %q: listen udp 127.0.0.1:%d: %v", n.Name, port, err)
	}
	n.t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
}

// udpSocket opens a UDP socket in the calling thread's namespace, bound to
// 127.0.0.1:sport and connected to 127.0.0.1:dport; the fd is blocking.
func udpSocket(sport, dport int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("udp socket: %w", err)
	}
	lo := [4]byte{127, 0, 0, 1}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: lo, Port: sport}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind 127.0.0.1:%d: %w", sport, err)
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: lo, Port: dport}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect 127.0.0.1:%d: %w", dport, err)
	}
	return fd, nil
}

// DeleteRaceResult is what DeleteRace measured. Every iteration is in
// exactly one of Both, DeleteFirst and RSTFirst.
type DeleteRaceResult struct {
	Iterations int
	// Both counts iterations in which the ctnetlink DELETE and the RST
	// both found the entry, so both called nf_ct_delete on it and one of
	// them lost test_and_set_bit(IPS_DYING_BIT): the race happened.
	Both int
	// DeleteFirst counts iterations in which the DELETE removed the entry
	// before the RST looked it up (the RST was invalid).
	DeleteFirst int
	// RSTFirst counts iterations in which the RST's kill removed the entry
	// before the DELETE looked it up (the DELETE got ENOENT).
	RSTFirst int
	// Entries is n's nf_conntrack_count after the last iteration.
	Entries uint64
}

const (
	deleteFirstPort = 20000 // source port of DeleteRace's entry in iteration 0; iteration i uses deleteFirstPort+i
	deletePort      = 80    // its destination port
	rstTable        = "labnetrst"
	rstChain        = "out"
)

// DeleteRace provokes two concurrent nf_ct_delete calls on one entry, from
// two paths that share no lock: a ctnetlink DELETE and the packet path.
//
// Two ctnetlink DELETEs cannot race: nfnetlink runs every ctnetlink
// request (NEW, GET, DELETE; NFNL_CB_MUTEX since Linux 5.13, a .call
// rather than .call_rcu callback before) under nfnl_lock of the ctnetlink
// subsystem, one mutex for all namespaces, so the second DELETE looks up
// only after the first has unhashed the entry and gets ENOENT.
//
// The packet path kills an entry without that mutex: a TCP RST for an
// entry that has not seen a reply makes the TCP tracker
// (nf_conntrack_tcp_packet) call nf_ct_kill_acct, which calls
// nf_ct_delete. So iterations times, DeleteRace inserts over ctnetlink an
// ESTABLISHED, unreplied TCP entry A:20000+i -> B:80 (A and B are the
// ends of a veth pair from n to a namespace of its own), then two threads
// pinned to two CPUs leave a spin barrier together: one sends a ctnetlink
// DELETE for the entry, the other a bare RST A:20000+i -> B:80 over a raw
// socket. The start of one of them is delayed by a few microseconds:
// the delay follows a staircase (an RST that won makes the next RST later,
// a DELETE that won makes the next DELETE later), so it settles where each
// wins half the time, on whatever kernel and machine, which is where the
// two lookups meet. The ground truth for each path: the DELETE succeeds only
// if its lookup found the entry (ctnetlink_del_conntrack answers 0
// whatever nf_ct_delete returned); an RST that found no entry is invalid
// (a RST cannot create one), which an nft counter in n counts. An
// iteration with a successful DELETE and a valid RST is one in which both
// called nf_ct_delete.
//
// DeleteRace first checks, without a race, that a lone RST kills such an
// entry on this kernel, and fails t if not. It adds the nft table
// labnetrst to n (whose ct rule also makes conntrack see n's packets) and
// sets n's nf_conntrack_tcp_be_liberal to 1, so that tcp_in_window accepts
// the RST whatever the window of an entry made over ctnetlink.
func (n *NS) DeleteRace(iterations int) DeleteRaceResult {
	n.t.Helper()
	if iterations < 1 || deleteFirstPort+iterations > 65536 {
		n.t.Fatalf("labnet: DeleteRace: %d iterations, want 1..%d", iterations, 65536-deleteFirstPort)
	}
	link := Connect(n.t, n, New(n.t))
	n.Sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", "1")
	// An anonymous counter: a named one (counter name) needs nft_objref,
	// which a kernel may have as a module that nothing loaded.
	n.NFT(fmt.Sprintf(`table ip %s {
	chain %s { type filter hook output priority -150; tcp flags rst ct state invalid counter; }
}
`, rstTable, rstChain))
	conn, err := n.DialConntrack()
	if err != nil {
		n.t.Fatalf("labnet: DeleteRace: %v", err)
	}
	defer conn.Close()
	flow := func(sport uint16, timeout uint32) conntrack.Flow {
		f := conntrack.NewFlow(unix.IPPROTO_TCP, 0, link.A4, link.B4, sport, deletePort, timeout, 0)
		if timeout != 0 {
			f.ProtoInfo.TCP = &conntrack.ProtoInfoTCP{State: tcpConntrackEstablished}
		}
		return f
	}

	// Without a race: a lone RST must kill the entry, and be valid.
	probe := uint16(deleteFirstPort - 1)
	if err := conn.Create(flow(probe, 600)); err != nil {
		n.t.Fatalf("labnet: DeleteRace: ctnetlink NEW: %v", err)
	}
	n.SendRawTCP(netip.AddrPortFrom(link.A4, probe), netip.AddrPortFrom(link.B4, deletePort), tcpRST)
	if c, inv := n.ConntrackCount(), n.rstInvalid(); c != 0 || inv != 0 {
		n.t.Fatalf("labnet: DeleteRace: a lone RST for an unreplied ESTABLISHED entry left %d entries and was invalid %d times, want 0 and 0 (does this kernel's TCP tracker still kill it?)", c, inv)
	}

	res := DeleteRaceResult{Iterations: iterations}
	var (
		raw      int    // side 1's raw socket
		seg      []byte // the RST of this iteration, made by side 0
		stairs   staircase
		offset   int64 // >0: side 1 starts this many ns late; <0: side 0 does
		deleteOK int   // DELETEs that succeeded
		dst      = &unix.SockaddrInet4{Addr: link.B4.As4()}
	)
	err = n.run(race{
		iterations: iterations,
		setup: func(side int) error {
			if side == 0 {
				return nil
			}
			var err error
			raw, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
			if err != nil {
				return fmt.Errorf("raw socket: %w", err)
			}
			if err := unix.Bind(raw, &unix.SockaddrInet4{Addr: link.A4.As4()}); err != nil {
				return fmt.Errorf("bind raw socket to %s: %w", link.A4, err)
			}
			return nil
		},
		teardown: func(side int) {
			if side == 1 && raw > 0 {
				unix.Close(raw)
			}
		},
		prepare: func(i int) error {
			sport := uint16(deleteFirstPort + i)
			if err := conn.Create(flow(sport, 600)); err != nil {
				return fmt.Errorf("ctnetlink NEW: %w", err)
			}
			seg = tcpSegment(netip.AddrPortFrom(link.A4, sport), netip.AddrPortFrom(link.B4, deletePort), tcpRST)
			offset = stairs.next(i)
			return nil
		},
		act: func(side, i int) error {
			switch {
			case side == 0 && offset < 0:
				spinFor(-offset)
			case side == 1 && offset > 0:
				spinFor(offset)
			}
			if side == 0 {
				return conn.Delete(flow(uint16(deleteFirstPort+i), 0))
			}
			return unix.Sendto(raw, seg, 0, dst)
		},
		finish: func(i int, errs [2]error) error {
			if errs[1] != nil {
				return fmt.Errorf("send RST: %w", errs[1])
			}
			switch err := errs[0]; {
			case err == nil:
				deleteOK++
				stairs.down()
			case errors.Is(err, unix.ENOENT):
				res.RSTFirst++
				stairs.up()
			default:
				return fmt.Errorf("ctnetlink DELETE: %w", err)
			}
			return nil
		},
	})
	if err != nil {
		n.t.Fatalf("labnet: DeleteRace: %v", err)
	}
	res.DeleteFirst = int(n.rstInvalid())
	res.Both = deleteOK - res.DeleteFirst
	if res.Both < 0 {
		n.t.Fatalf("labnet: DeleteRace: %d RSTs found no entry, but only %d DELETEs succeeded", res.DeleteFirst, deleteOK)
	}
	res.Entries = n.ConntrackCount()
	return res
}

const (
	tcpRST                  = 0x04
	tcpConntrackEstablished = 3 // TCP_CONNTRACK_ESTABLISHED
)

// rstInvalid reads DeleteRace's nft counter of RSTs that conntrack found
// invalid, the only counter in its chain.
func (n *NS) rstInvalid() uint64 {
	n.t.Helper()
	out := n.MustExec("nft", "list", "chain", "ip", rstTable, rstChain)
	f := strings.Fields(out)
	for i, w := range f {
		if w == "packets" && i+1 < len(f) {
			v, err := strconv.ParseUint(f[i+1], 10, 64)
			if err == nil {
				return v
			}
		}
	}
	n.t.Fatalf("netns %q: no packet count in nft list chain: %s", n.Name, out)
	return 0
}

// staircase finds the start delay at which two racing paths each win
// half the time: up delays the second path more, down less, by a step of
// 1/16 of the current delay (at least 100 ns), so it settles quickly
// whether the two paths differ by a microsecond or, under emulation, by a
// hundred. next adds a dither of up to ±4 steps, so that iterations spread
// around the point where they meet.
type staircase struct {
	center int64 // ns
}

func (s *staircase) step() int64 {
	d := s.center
	if d < 0 {
		d = -d
	}
	return max(100, d/16)
}

func (s *staircase) up()   { s.center += s.step() }
func (s *staircase) down() { s.center -= s.step() }

// next is the delay for iteration i: >0 delays the second path (side 1),
// <0 the first (side 0), in ns.
func (s *staircase) next(i int) int64 {
	return s.center + int64((i*5)%9-4)*s.step()
}

// spinFor busy-waits ns nanoseconds (no sleep: a sleep would give up the
// CPU for far longer).
func spinFor(ns int64) {
	start := time.Now()
	for time.Since(start) < time.Duration(ns) {
	}
}
