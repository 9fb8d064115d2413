package ebpftracer

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"time"

	"github.com/ctagent/ctagent/pkg/tracer"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// ErrSelfTest means the eBPF programs attached but the start-up self-test
// found events that no candidate hook of a required group sees.
var ErrSelfTest = errors.New("hook self-test failed")

// selfCheck is one step of the self-test: events of one kind that the
// kernel made, and how many of them the counters saw.
type selfCheck struct {
	group   string // the hook group it proves
	what    string // e.g. "flush"
	want    uint64
	got     uint64
	skipped string // why the step did not run
}

func (c selfCheck) ok() bool { return c.skipped == "" && c.got == c.want }

func (c selfCheck) String() string {
	if c.skipped != "" {
		return fmt.Sprintf("%s: not run (%s)", c.what, c.skipped)
	}
	return fmt.Sprintf("%s: %d of %d seen", c.what, c.got, c.want)
}

// selfTestResult is what one run of the self-test found.
type selfTestResult struct {
	inode  uint32
	checks []selfCheck
}

// verdict says whether the hooks of group passed, missed events, or were
// not tested, with the steps in words.
func (r selfTestResult) verdict(group string) (tracer.HookState, string) {
	var ran, failed, all []string
	for _, c := range r.checks {
		if c.group != group {
			continue
		}
		all = append(all, c.String())
		if c.skipped != "" {
			continue
		}
		ran = append(ran, c.String())
		if !c.ok() {
			failed = append(failed, c.String())
		}
	}
	switch {
	case len(failed) > 0:
		return tracer.HookMissed, strings.Join(failed, "; ")
	case len(ran) > 0:
		return tracer.HookPassed, strings.Join(all, "; ")
	case len(all) > 0:
		return tracer.HookNotTested, strings.Join(all, "; ")
	}
	return tracer.HookNotTested, "the self-test cannot provoke these events (a full table is a global setting)"
}

// proveHooks runs the self-test and replaces a candidate that missed events
// with the next one of its group, until every group passes or has no
// candidate left. A group left without a working candidate fails the
// backend (ErrSelfTest). A self-test that cannot run (no permission to make
// a namespace, no ctnetlink) leaves the hooks attached, marked not_tested,
// and says so in the log.
func (t *bpfTracer) proveHooks(ctx context.Context) error {
	for round := 0; round < 8; round++ {
		res, err := t.selfTest(ctx)
		if err != nil {
			t.log.Warn("hook self-test could not run: the attached hooks are unproven on this kernel", zap.Error(err))
			for _, group := range t.plan {
				for _, p := range group {
					if p.status.Active {
						p.status.State, p.status.Detail = tracer.HookNotTested, "self-test could not run: "+err.Error()
					}
				}
			}
			return nil
		}
		replaced := false
		for _, group := range t.plan {
			idx := activeIndex(group)
			if idx < 0 {
				continue
			}
			p := group[idx]
			state, detail := res.verdict(p.group.name)
			p.status.State, p.status.Detail = state, detail
			if state != tracer.HookMissed {
				continue
			}
			if t.adopted {
				// Adopted programs have no other candidate loaded: the
				// caller replaces the pins with programs attached anew.
				return fmt.Errorf("%w: adopted hook %s missed events (%s)", ErrSelfTest, p.name(), detail)
			}
			t.log.Warn("hook misses events, trying the next candidate",
				zap.String("group", p.group.name), zap.String("hook", p.name()), zap.String("missed", detail))
			p.status.Active = false
			if err := p.detach(); err != nil {
				return fmt.Errorf("detach %s: %w", p.name(), err)
			}
			if p.cand.claims {
				if err := t.setUseClaims(false); err != nil {
					return err
				}
			}
			if _, err := t.attachNext(group, idx); err != nil {
				if p.group.optional {
					continue
				}
				return fmt.Errorf("%w: group %s (%s): %s missed events (%s), and no other candidate is left: %v",
					ErrSelfTest, p.group.name, strings.Join(p.group.serves, ", "), p.name(), detail, err)
			}
			replaced = true
		}
		if !replaced {
			return nil
		}
	}
	return fmt.Errorf("%w: candidates kept failing", ErrSelfTest)
}

// activeIndex returns the index of group's active candidate, or -1.
func activeIndex(group []*plannedHook) int {
	for i, p := range group {
		if p.status.Active {
			return i
		}
	}
	return -1
}

// Addresses of the self-test's ctnetlink entries (TEST-NET-2, RFC 5737), in
// a namespace of its own.
var (
	stA = netip.MustParseAddr("198.51.100.1")
	stB = netip.MustParseAddr("198.51.100.2")
	stC = netip.MustParseAddr("198.51.100.5")
	stD = netip.MustParseAddr("198.51.100.6")
)

// selfTestUDPFlows is how many UDP flows the packet-path step sends.
const selfTestUDPFlows = 3

// selfTest makes conntrack entries in a throwaway network namespace over
// every path the hooks must see, and checks after each step that the
// counters of that namespace moved by exactly what the kernel did:
//
//	packet path  UDP datagrams over loopback (conntrack enabled by an
//	             nftables ct rule): created, via __nf_conntrack_confirm;
//	ctnetlink    inserts, and one whose reply tuple clashes: created and
//	             -EEXIST, via nf_conntrack_hash_check_insert;
//	delete       one entry deleted over ctnetlink (nf_ct_delete);
//	expiry       an entry with a 1 s timeout, looked up after it expired:
//	             the lookup removes it (nf_ct_gc_expired), unless the gc
//	             worker came first (gc_worker): either way, once;
//	flush        the rest flushed (nf_ct_iterate_cleanup).
//
// Its events are left out of the event stream and its counters forgotten
// at the end.
func (t *bpfTracer) selfTest(ctx context.Context) (selfTestResult, error) {
	ns, err := newThrowawayNetns(selfTestUDPFlows)
	if err != nil {
		return selfTestResult{}, err
	}
	// In this order: the inode cannot be reused by another namespace
	// before ns is closed, so nothing else is hidden or forgotten.
	defer ns.Close()
	if err := t.setSelfTestNetns(ns.inode); err != nil {
		return selfTestResult{}, err
	}
	defer t.setSelfTestNetns(0)
	defer t.Forget(ns.inode)
	return runSelfTest(ctx, ns, func() (tracer.Counters, error) { return t.Counters() })
}

// setSelfTestNetns tells the programs which namespace's events to leave out
// of the event stream (its counters still count).
func (t *bpfTracer) setSelfTestNetns(inode uint32) error {
	return t.setVar("selftest_netns", inode)
}

// runSelfTest runs the steps in ns and reads what they did from counters.
func runSelfTest(ctx context.Context, ns *throwawayNetns, counters func() (tracer.Counters, error)) (res selfTestResult, err error) {
	res.inode = ns.inode
	c, err := conntrack.Dial(&netlink.Config{NetNS: int(ns.handle)})
	if err != nil {
		return res, fmt.Errorf("ctnetlink in the self-test namespace: %w", err)
	}
	defer c.Close()

	read := func() (tracer.Values, error) {
		all, err := counters()
		if err != nil {
			return tracer.Values{}, err
		}
		var v tracer.Values
		for k, x := range all {
			if k.NetNS == ns.inode {
				v.Add(x)
			}
		}
		return v, nil
	}
	// stepFrom runs do, then waits until field has moved by want since
	// before (and checks that it does not move further: every event
	// exactly once).
	stepFrom := func(before tracer.Values, group, what string, field func(tracer.Values) uint64, want uint64, do func() error) error {
		if err := do(); err != nil {
			return fmt.Errorf("self-test %s: %w", what, err)
		}
		got := func() uint64 {
			v, err := read()
			if err != nil {
				return 0
			}
			return field(v) - field(before)
		}
		deadline := time.Now().Add(2 * time.Second)
		n := got()
		for n < want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
			n = got()
		}
		time.Sleep(20 * time.Millisecond)
		res.checks = append(res.checks, selfCheck{group: group, what: what, want: want, got: got()})
		return ctx.Err()
	}
	step := func(group, what string, field func(tracer.Values) uint64, want uint64, do func() error) error {
		before, err := read()
		if err != nil {
			return err
		}
		return stepFrom(before, group, what, field, want, do)
	}
	created := func(v tracer.Values) uint64 { return v.Created }
	destroyed := func(v tracer.Values) uint64 { return v.Destroyed }
	exists := func(v tracer.Values) uint64 { return v.Failed[tracer.ReasonExists] }

	if disable, err := enableConntrack(ns.handle); err != nil {
		res.checks = append(res.checks, selfCheck{group: "confirm", what: "packet path inserts", skipped: err.Error()})
	} else {
		// Unregister the conntrack hooks here rather than in the kernel's
		// asynchronous namespace teardown, so that the self-test is over
		// when Open returns.
		defer disable()
		if err := step("confirm", "packet path inserts", created, selfTestUDPFlows, ns.sendUDP); err != nil {
			return res, err
		}
	}

	kept := conntrack.NewFlow(unix.IPPROTO_UDP, 0, stA, stB, 7001, 53, 60, 0)
	deleted := conntrack.NewFlow(unix.IPPROTO_TCP, 0, stA, stB, 1000, 2000, 60, 0)
	deleted.ProtoInfo.TCP = &conntrack.ProtoInfoTCP{State: 3} // ESTABLISHED
	if err := step("ctnetlink_insert", "ctnetlink inserts", created, 2, func() error {
		if err := c.Create(kept); err != nil {
			return err
		}
		return c.Create(deleted)
	}); err != nil {
		return res, err
	}
	// ctnetlink looks the new entry up by its original tuple only; the
	// clash on the reply tuple is found by nf_conntrack_hash_check_insert.
	clash := conntrack.NewFlow(unix.IPPROTO_TCP, 0, stC, stD, 3000, 4000, 60, 0)
	clash.TupleReply = deleted.TupleReply
	clash.ProtoInfo.TCP = &conntrack.ProtoInfoTCP{State: 3}
	if err := step("ctnetlink_insert", "ctnetlink -EEXIST", exists, 1, func() error {
		if err := c.Create(clash); !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("insert with a clashing reply tuple: got %v, want EEXIST", err)
		}
		return nil
	}); err != nil {
		return res, err
	}

	if err := step("destroy", "single delete", destroyed, 1, func() error { return c.Delete(deleted) }); err != nil {
		return res, err
	}

	// An entry with a 1 s timeout. Its destroy is measured from before its
	// insert: on a busy host the gc worker, whose interval shrinks when
	// many entries expire, may free it before the lookup does (seen with
	// parallel tests creating short-lived entries); both are removal paths
	// the destroy hook must see, exactly once.
	beforeExpiring, err := read()
	if err != nil {
		return res, err
	}
	expiring := conntrack.NewFlow(unix.IPPROTO_UDP, 0, stA, stB, 7000, 53, 1, 0)
	var inserted time.Time
	if err := step("ctnetlink_insert", "ctnetlink insert", created, 1, func() error {
		inserted = time.Now()
		return c.Create(expiring)
	}); err != nil {
		return res, err
	}
	if err := stepFrom(beforeExpiring, "destroy", "expiry", destroyed, 1, func() error {
		// The kernel's timeout is in jiffies from the insert; a lookup of
		// an expired entry removes it. Retry while it is not expired yet.
		time.Sleep(time.Until(inserted.Add(1100 * time.Millisecond)))
		for i := 0; ; i++ {
			_, err := c.Get(expiring)
			if errors.Is(err, unix.ENOENT) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("look up the expired entry: %w", err)
			}
			if i == 20 {
				return errors.New("the entry with a 1 s timeout did not expire within 3 s")
			}
			time.Sleep(100 * time.Millisecond)
		}
	}); err != nil {
		return res, err
	}

	live, err := c.Dump(nil)
	if err != nil {
		return res, fmt.Errorf("self-test dump: %w", err)
	}
	if err := step("destroy", "flush", destroyed, uint64(len(live)), c.Flush); err != nil {
		return res, err
	}
	return res, nil
}

// throwawayNetns is a new, empty network namespace with loopback up and
// UDP sockets bound in it.
type throwawayNetns struct {
	handle netns.NsHandle
	inode  uint32
	udp    []int
}

// newThrowawayNetns makes the namespace on a locked thread and brings that
// thread back to its own namespace. The namespace lives until Close.
func newThrowawayNetns(sockets int) (*throwawayNetns, error) {
	type result struct {
		ns  *throwawayNetns
		err error
	}
	done := make(chan result, 1)
	go func() {
		// The thread stays locked (and dies with this goroutine) unless it
		// is back in its own namespace.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			done <- result{err: fmt.Errorf("open own network namespace: %w", err)}
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			done <- result{err: fmt.Errorf("new network namespace: %w", err)}
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
			return
		}
		tn := &throwawayNetns{handle: ns}
		err = tn.setUp(sockets)
		if rerr := netns.Set(orig); rerr != nil {
			tn.Close()
			done <- result{err: fmt.Errorf("return to own network namespace: %w", rerr)}
			return
		}
		runtime.UnlockOSThread()
		if err != nil {
			tn.Close()
			done <- result{err: err}
			return
		}
		done <- result{ns: tn}
	}()
	r := <-done
	return r.ns, r.err
}

// setUp runs inside the namespace: inode, loopback up, sockets.
func (n *throwawayNetns) setUp(sockets int) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(n.handle), &st); err != nil {
		return fmt.Errorf("stat network namespace: %w", err)
	}
	n.inode = uint32(st.Ino)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	n.udp = append(n.udp, fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	for i := 1; i < sockets; i++ {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		n.udp = append(n.udp, fd)
	}
	for _, fd := range n.udp {
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			return fmt.Errorf("bind: %w", err)
		}
	}
	return nil
}

// sendUDP sends one datagram from every socket to 127.0.0.1:9 (discard; no
// listener: the ICMP error it causes is related to the entry, not a new one).
func (n *throwawayNetns) sendUDP() error {
	for _, fd := range n.udp {
		if err := unix.Sendto(fd, []byte("ctagent self-test"), 0, &unix.SockaddrInet4{Port: 9, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			return fmt.Errorf("send UDP: %w", err)
		}
	}
	return nil
}

// Close closes the sockets and the namespace handle; the kernel tears the
// namespace down when nothing else holds it.
func (n *throwawayNetns) Close() {
	for _, fd := range n.udp {
		unix.Close(fd)
	}
	n.udp = nil
	n.handle.Close()
}

// enableConntrack adds an nftables rule that uses conntrack state to the
// namespace: the kernel runs its conntrack hooks in a namespace only while
// something (a rule like this, or iptables' conntrack match) needs them.
// disable removes the rule's table again.
func enableConntrack(ns netns.NsHandle) (disable func() error, err error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	table := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "ctagent_selftest"})
	chain := c.AddChain(&nftables.Chain{
		Name: "output", Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter,
	})
	c.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Counter{},
	}})
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("nftables ct rule: %w", err)
	}
	return func() error {
		c.DelTable(table)
		return c.Flush()
	}, nil
}
