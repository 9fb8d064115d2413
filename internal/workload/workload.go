// Package workload makes conntrack churn for benchmarks: it creates and
// destroys conntrack entries at a controlled rate across several network
// namespaces, for a fixed number of events, and records the ground truth
// (entries created and destroyed in each namespace) that a consumer of
// conntrack events or counters is compared with.
//
// Two modes:
//   - ModeCtnetlink creates UDP entries over ctnetlink
//     (github.com/ti-mo/conntrack) and deletes each of them again: one NEW
//     and one DESTROY event per entry, nothing on the packet path.
//   - ModeUDP sends real UDP datagrams from a socket in the namespace over
//     a veth to a peer, each to a new destination port (one entry per
//     datagram, made by the packet path), then flushes the namespace's table
//     over ctnetlink; created and destroyed are the kernel's own entry
//     counts before and after the flush.
//   - ModeTCP connects over the veth to a TCP server on the peer, one
//     connection per entry, and resets each (SO_LINGER 0: no TIME_WAIT
//     socket; the entry stays, in CLOSE), then flushes the table like
//     ModeUDP.
//
// Entries are made in batches of Spec.Batch per namespace, the namespaces
// taken in turn; each batch is destroyed before the next is made, so the
// table stays small. The namespaces must hold no other entries while the
// workload runs (ModeUDP counts the whole table).
//
//	res, err := workload.Run(ctx, targets, workload.Spec{Mode: workload.ModeUDP, Events: 20000, Rate: 5000})
//	res.Events()        // created + destroyed, all namespaces
//	res.PerNS[0].Created
package workload

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// Mode is how entries are made.
type Mode string

// The modes; see the package documentation.
const (
	ModeCtnetlink Mode = "ctnetlink"
	ModeUDP       Mode = "udp"
	ModeTCP       Mode = "tcp"
)

// DefaultBatch is Spec.Batch when it is 0.
const DefaultBatch = 64

// entryTimeout is the timeout of entries made over ctnetlink: longer than
// any run, so no entry expires before it is deleted.
const entryTimeout = 600

// Target is one network namespace the workload writes into.
type Target struct {
	// Path is the namespace's file (e.g. /run/netns/NAME); "" for the
	// calling process's own namespace.
	Path string
	// Inode is the namespace's inode number, copied into the results.
	Inode uint32
	// Conn (ModeUDP) is an unconnected UDP socket opened in the namespace,
	// and Dst an IPv4 address of a veth peer it reaches; a conntrack rule
	// in the namespace makes conntrack track what it sends.
	Conn net.PacketConn
	Dst  netip.Addr
	// DialTCP (ModeTCP) opens a TCP connection from the namespace to a
	// server that accepts any number of them.
	DialTCP func() (*net.TCPConn, error)
}

// Spec says how much churn to make and how fast.
type Spec struct {
	Mode Mode
	// Events is the number of events to make (one created and one
	// destroyed per entry), rounded down to an even number.
	Events int
	// Rate is events per second; 0: as fast as possible.
	Rate float64
	// Batch is how many entries are made in a namespace before they are
	// destroyed; 0: DefaultBatch.
	Batch int
}

// NSTruth is what happened in one namespace.
type NSTruth struct {
	Inode     uint32 `json:"netns"`
	Created   uint64 `json:"created"`
	Destroyed uint64 `json:"destroyed"`
	// Sent (ModeUDP, ModeTCP) is the datagrams sent or connections made,
	// each meant to make one entry.
	Sent uint64 `json:"sent,omitempty"`
}

// Result is the ground truth of one run.
type Result struct {
	Mode  Mode          `json:"mode"`
	Rate  float64       `json:"rate"`
	Wall  time.Duration `json:"wall_ns"`
	PerNS []NSTruth     `json:"per_netns"`
}

// Events is the number of events the run made: entries created and
// destroyed in all namespaces.
func (r Result) Events() uint64 {
	var n uint64
	for _, t := range r.PerNS {
		n += t.Created + t.Destroyed
	}
	return n
}

// Truth returns the record of the namespace with inode, and whether the
// run wrote into it.
func (r Result) Truth(inode uint32) (NSTruth, bool) {
	for _, t := range r.PerNS {
		if t.Inode == inode {
			return t, true
		}
	}
	return NSTruth{}, false
}

// plan splits events into batches: entries per batch, the namespaces in
// turn. It returns the index of the namespace and the size of each batch.
func plan(events, namespaces, batch int) (ns, size []int) {
	entries := events / 2
	for i := 0; entries > 0; i++ {
		n := min(batch, entries)
		ns = append(ns, i%namespaces)
		size = append(size, n)
		entries -= n
	}
	return ns, size
}

// pacer sleeps so that the events made so far keep to a rate.
type pacer struct {
	start time.Time
	rate  float64
}

func (p pacer) wait(ctx context.Context, done int) error {
	if p.rate <= 0 {
		return ctx.Err()
	}
	due := p.start.Add(time.Duration(float64(done) / p.rate * float64(time.Second)))
	if d := time.Until(due); d > time.Millisecond {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
	return nil
}

// Run makes the churn spec asks for in targets and returns what it made.
// It stops at the first error; the result then holds what was made so far.
func Run(ctx context.Context, targets []Target, spec Spec) (Result, error) {
	res := Result{Mode: spec.Mode, Rate: spec.Rate}
	if len(targets) == 0 {
		return res, errors.New("workload: no target namespace")
	}
	if spec.Mode != ModeCtnetlink && spec.Mode != ModeUDP && spec.Mode != ModeTCP {
		return res, fmt.Errorf("workload: unknown mode %q", spec.Mode)
	}
	batch := spec.Batch
	if batch <= 0 {
		batch = DefaultBatch
	}
	if spec.Mode == ModeUDP && batch > 30000 {
		return res, fmt.Errorf("workload: batch %d: more destination ports than there are", batch)
	}
	conns := make([]*conntrack.Conn, len(targets))
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i, t := range targets {
		if spec.Mode == ModeUDP && (t.Conn == nil || !t.Dst.Is4()) {
			return res, fmt.Errorf("workload: netns %d: udp mode needs a socket and an IPv4 destination", t.Inode)
		}
		if spec.Mode == ModeTCP && t.DialTCP == nil {
			return res, fmt.Errorf("workload: netns %d: tcp mode needs a dialer", t.Inode)
		}
		c, err := dial(t.Path)
		if err != nil {
			return res, err
		}
		conns[i] = c
		res.PerNS = append(res.PerNS, NSTruth{Inode: t.Inode})
	}
	nsOf, sizes := plan(spec.Events, len(targets), batch)
	p := pacer{start: time.Now(), rate: spec.Rate}
	done := 0
	var err error
	for b := range nsOf {
		i := nsOf[b]
		switch spec.Mode {
		case ModeCtnetlink:
			err = ctnetlinkBatch(ctx, conns[i], &res.PerNS[i], b, sizes[b], p, &done)
		case ModeUDP:
			err = flowBatch(ctx, conns[i], &res.PerNS[i], sizes[b], p, &done, targets[i].sendUDP)
		case ModeTCP:
			err = flowBatch(ctx, conns[i], &res.PerNS[i], sizes[b], p, &done, targets[i].connectTCP)
		}
		if err != nil {
			err = fmt.Errorf("workload: netns %d, batch %d: %w", targets[i].Inode, b, err)
			break
		}
	}
	res.Wall = time.Since(p.start)
	return res, err
}

// dial opens a ctnetlink socket in the namespace at path.
func dial(path string) (*conntrack.Conn, error) {
	if path == "" {
		c, err := conntrack.Dial(nil)
		if err != nil {
			return nil, fmt.Errorf("workload: ctnetlink socket: %w", err)
		}
		return c, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("workload: %w", err)
	}
	defer f.Close()
	c, err := conntrack.Dial(&netlink.Config{NetNS: int(f.Fd())})
	if err != nil {
		return nil, fmt.Errorf("workload: ctnetlink socket in %s: %w", path, err)
	}
	return c, nil
}

// ctnetlinkFlow is entry k of batch b: a UDP entry between two addresses
// of 198.18.0.0/15 (benchmarking), its source port k.
func ctnetlinkFlow(b, k int) conntrack.Flow {
	src := netip.AddrFrom4([4]byte{198, 18, byte(b >> 8), byte(b)})
	dst := netip.AddrFrom4([4]byte{198, 19, 0, 1})
	return conntrack.NewFlow(unix.IPPROTO_UDP, 0, src, dst, uint16(1024+k), 53, entryTimeout, 0)
}

func ctnetlinkBatch(ctx context.Context, c *conntrack.Conn, t *NSTruth, b, n int, p pacer, done *int) error {
	ops := []struct {
		name  string
		do    func(conntrack.Flow) error
		count *uint64
	}{{"create", c.Create, &t.Created}, {"delete", c.Delete, &t.Destroyed}}
	for _, op := range ops {
		for k := range n {
			if err := p.wait(ctx, *done); err != nil {
				return err
			}
			if err := op.do(ctnetlinkFlow(b, k)); err != nil {
				return fmt.Errorf("%s entry %d: %w", op.name, k, err)
			}
			*op.count++
			*done++
		}
	}
	return nil
}

// firstUDPPort is the destination port of a batch's first datagram.
const firstUDPPort = 20000

// sendUDP sends datagram k of a batch.
func (tg Target) sendUDP(k int) error {
	dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(tg.Dst, uint16(firstUDPPort+k)))
	if _, err := tg.Conn.WriteTo([]byte("x"), dst); err != nil {
		return fmt.Errorf("send to %s: %w", dst, err)
	}
	return nil
}

// connectTCP makes connection k of a batch and resets it.
func (tg Target) connectTCP(int) error {
	c, err := tg.DialTCP()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	if err := c.SetLinger(0); err != nil {
		c.Close()
		return fmt.Errorf("SO_LINGER: %w", err)
	}
	return c.Close()
}

// flowBatch makes n entries on the packet path with one, then flushes
// the namespace's table; the kernel's entry counts before and after the
// flush are what was created and destroyed.
func flowBatch(ctx context.Context, c *conntrack.Conn, t *NSTruth, n int, p pacer, done *int, one func(k int) error) error {
	for k := range n {
		if err := p.wait(ctx, *done); err != nil {
			return err
		}
		if err := one(k); err != nil {
			return err
		}
		t.Sent++
		*done++
	}
	before, err := c.StatsGlobal()
	if err != nil {
		return fmt.Errorf("entry count: %w", err)
	}
	// The flush destroys the batch: n more events, paced as one.
	if err := p.wait(ctx, *done); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	after, err := c.StatsGlobal()
	if err != nil {
		return fmt.Errorf("entry count: %w", err)
	}
	t.Created += uint64(before.Entries)
	t.Destroyed += uint64(before.Entries) - uint64(min(after.Entries, before.Entries))
	*done += n
	return nil
}
