package labnet

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Tuple is one direction of a conntrack entry. For ICMP and ICMPv6,
// SrcPort is the echo id and DstPort is type<<8|code. It has the fields of
// tracer.Tuple, so one converts to the other: tracer.Tuple(r.Original).
type Tuple struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
}

// Record is one entry as conntrack -L -o extended,id lists it.
type Record struct {
	Family          uint8 // 2 (AF_INET) or 10 (AF_INET6)
	Protocol        uint8 // IPPROTO_*
	Original, Reply Tuple
	Timeout         time.Duration // time left
	State           string        // TCP state, e.g. ESTABLISHED; "" for other protocols
	Flags           []string      // ASSURED, UNREPLIED, ...
	Mark            uint32
	Zone            uint16
	ID              uint32 // the entry's conntrack id (ctnetlink CTA_ID)
	Line            string // the whole line
}

// Has reports whether the entry carries flag (e.g. "ASSURED").
func (r Record) Has(flag string) bool { return slices.Contains(r.Flags, flag) }

// CTList lists n's conntrack table, IPv4 and IPv6, with conntrack -L.
func (n *NS) CTList() []Record {
	n.t.Helper()
	var out []Record
	for _, fam := range []string{"ipv4", "ipv6"} {
		for _, line := range strings.Split(n.MustExec("conntrack", "-L", "-f", fam, "-o", "extended,id"), "\n") {
			if strings.TrimSpace(line) == "" {
				continue
			}
			r, err := ParseRecord(line)
			if err != nil {
				n.t.Fatalf("netns %q: conntrack -L: %v", n.Name, err)
			}
			out = append(out, r)
		}
	}
	return out
}

// ParseRecord parses one line of conntrack -L -o extended,id: "ipv4 2 tcp 6
// 117 SYN_SENT src=.. dst=.. sport=.. dport=.. [UNREPLIED] src=.. dst=..
// sport=.. dport=.. mark=0 zone=3 use=1 id=123". ICMP tuples print
// type=, code= and id= (the echo id) instead of ports; the id= after use=
// is the entry's.
func ParseRecord(line string) (Record, error) {
	r := Record{Line: line}
	f := strings.Fields(line)
	if len(f) < 5 {
		return r, fmt.Errorf("short line %q", line)
	}
	fam, err1 := strconv.ParseUint(f[1], 10, 8)
	proto, err2 := strconv.ParseUint(f[3], 10, 8)
	tmo, err3 := strconv.ParseUint(f[4], 10, 32)
	if err := errors.Join(err1, err2, err3); err != nil {
		return r, fmt.Errorf("line %q: %w", line, err)
	}
	r.Family, r.Protocol, r.Timeout = uint8(fam), uint8(proto), time.Duration(tmo)*time.Second
	// dir is the tuple being read: -1 before the first src=, 0 original,
	// 1 reply.
	tuples, dir, afterUse := [2]*Tuple{&r.Original, &r.Reply}, -1, false
	var icmpType, icmpCode [2]uint64
	for _, tok := range f[5:] {
		if strings.HasPrefix(tok, "[") {
			r.Flags = append(r.Flags, strings.Trim(tok, "[]"))
			continue
		}
		k, v, ok := strings.Cut(tok, "=")
		if !ok {
			r.State = tok
			continue
		}
		if k == "src" {
			if dir++; dir > 1 {
				return r, fmt.Errorf("line %q: more than two tuples", line)
			}
		}
		tupleKey := k == "src" || k == "dst" || k == "sport" || k == "dport" || k == "type" || k == "code" || (k == "id" && !afterUse)
		if tupleKey && dir < 0 {
			return r, fmt.Errorf("line %q: %s before the first src=", line, tok)
		}
		var err error
		switch {
		case k == "src":
			tuples[dir].Src, err = netip.ParseAddr(v)
		case k == "dst":
			tuples[dir].Dst, err = netip.ParseAddr(v)
		case k == "sport", k == "id" && !afterUse: // the ICMP echo id
			tuples[dir].SrcPort, err = parseU16(v)
		case k == "dport":
			tuples[dir].DstPort, err = parseU16(v)
		case k == "type":
			icmpType[dir], err = strconv.ParseUint(v, 10, 8)
		case k == "code":
			icmpCode[dir], err = strconv.ParseUint(v, 10, 8)
		case k == "id":
			var id uint64
			id, err = strconv.ParseUint(v, 10, 32)
			r.ID = uint32(id)
		case k == "mark":
			var m uint64
			m, err = strconv.ParseUint(v, 10, 32)
			r.Mark = uint32(m)
		case k == "zone":
			r.Zone, err = parseU16(v)
		case k == "use":
			afterUse = true
		}
		if err != nil {
			return r, fmt.Errorf("line %q: %s: %w", line, tok, err)
		}
	}
	if r.Protocol == unix.IPPROTO_ICMP || r.Protocol == unix.IPPROTO_ICMPV6 {
		r.Original.DstPort = uint16(icmpType[0]<<8 | icmpCode[0])
		r.Reply.DstPort = uint16(icmpType[1]<<8 | icmpCode[1])
	}
	return r, nil
}

func parseU16(s string) (uint16, error) {
	v, err := strconv.ParseUint(s, 10, 16)
	return uint16(v), err
}

// CTCount is conntrack -C in n: the kernel's entry count.
func (n *NS) CTCount() uint64 {
	n.t.Helper()
	s := strings.TrimSpace(n.MustExec("conntrack", "-C"))
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		n.t.Fatalf("netns %q: conntrack -C: %q: %v", n.Name, s, err)
	}
	return v
}

// CTStats is conntrack -S in n, every counter summed over CPUs (keys as
// conntrack prints them: found, invalid, insert_failed, drop, ...).
func (n *NS) CTStats() map[string]uint64 {
	n.t.Helper()
	sum := map[string]uint64{}
	for _, tok := range strings.Fields(n.MustExec("conntrack", "-S")) {
		k, v, ok := strings.Cut(tok, "=")
		if !ok || k == "cpu" {
			continue
		}
		x, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			n.t.Fatalf("netns %q: conntrack -S: %q: %v", n.Name, tok, err)
		}
		sum[k] += x
	}
	return sum
}

// ProcStats reads /proc/net/stat/nf_conntrack in n: every column summed
// over the CPU rows, except "entries", which every row repeats. Keys are
// the file's column names (icmp_error, clashres, chainlength, ...), which
// are not all conntrack -S's.
func (n *NS) ProcStats() map[string]uint64 {
	n.t.Helper()
	lines := strings.Split(strings.TrimSpace(n.MustExec("cat", "/proc/net/stat/nf_conntrack")), "\n")
	head := strings.Fields(lines[0])
	sum := map[string]uint64{}
	for i, line := range lines[1:] {
		for j, f := range strings.Fields(line) {
			v, err := strconv.ParseUint(f, 16, 64)
			if err != nil || j >= len(head) {
				n.t.Fatalf("netns %q: /proc/net/stat/nf_conntrack: %q", n.Name, line)
			}
			if head[j] == "entries" && i > 0 {
				continue
			}
			sum[head[j]] += v
		}
	}
	return sum
}

// CTInsert runs conntrack -I with args in n; see InsertArgs.
func (n *NS) CTInsert(args ...string) error {
	_, err := n.Exec(append([]string{"conntrack", "-I"}, args...)...)
	return err
}

// CTDelete runs conntrack -D with args in n.
func (n *NS) CTDelete(args ...string) error {
	_, err := n.Exec(append([]string{"conntrack", "-D"}, args...)...)
	return err
}

// CTFlush empties n's table (conntrack -F). Refused on Root, which other
// tests and processes share.
func (n *NS) CTFlush() {
	n.t.Helper()
	if n.Name == "" {
		n.t.Fatal("labnet: CTFlush on the root namespace")
	}
	n.MustExec("conntrack", "-F")
}

// CTLoad runs many conntrack commands in one process (conntrack -R), one
// per line without the program name, e.g. "-I -s 10.0.0.1 ...".
func (n *NS) CTLoad(lines []string) {
	n.t.Helper()
	f, err := os.CreateTemp("", "labnet-*.txt")
	if err != nil {
		n.t.Fatal(err)
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(strings.Join(lines, "\n") + "\n")
	if err := errors.Join(err, f.Close()); err != nil {
		n.t.Fatal(err)
	}
	n.MustExec("conntrack", "-R", f.Name())
}

// InsertArgs returns conntrack -I arguments for an entry of proto ("tcp",
// "udp", "icmp" or "icmpv6") from src to dst with a timeout of 600 s. TCP
// entries are ESTABLISHED; ICMP entries are echo requests whose id is the
// port of src. extra is appended, e.g. "-u", "SEEN_REPLY,ASSURED". The
// first 6 arguments (addresses and protocol) select the entry for
// conntrack -D.
func InsertArgs(proto string, src, dst netip.AddrPort, extra ...string) []string {
	a := []string{"-s", src.Addr().String(), "-d", dst.Addr().String(), "-p", proto, "-t", "600"}
	switch proto {
	case "icmp":
		a = append(a, "--icmp-type", "8", "--icmp-code", "0", "--icmp-id", strconv.Itoa(int(src.Port())))
	case "icmpv6":
		a = append(a, "--icmpv6-type", "128", "--icmpv6-code", "0", "--icmpv6-id", strconv.Itoa(int(src.Port())))
	case "tcp":
		a = append(a, "--sport", strconv.Itoa(int(src.Port())), "--dport", strconv.Itoa(int(dst.Port())), "--state", "ESTABLISHED")
	default:
		a = append(a, "--sport", strconv.Itoa(int(src.Port())), "--dport", strconv.Itoa(int(dst.Port())))
	}
	return append(a, extra...)
}

// SetConntrackMax sets the global net.netfilter.nf_conntrack_max (the
// kernel checks it against each namespace's own count; writable in the
// root namespace only) and restores the previous value in t.Cleanup, or
// when the returned func is called, whichever comes first.
func SetConntrackMax(t testing.TB, v uint64) (restore func()) {
	t.Helper()
	const path = "/proc/sys/net/netfilter/nf_conntrack_max"
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	restore = func() {
		once.Do(func() {
			if err := os.WriteFile(path, old, 0o644); err != nil {
				t.Errorf("restore %s to %s: %v", path, strings.TrimSpace(string(old)), err)
			}
		})
	}
	t.Cleanup(restore)
	if err := os.WriteFile(path, []byte(strconv.FormatUint(v, 10)), 0o644); err != nil {
		t.Fatal(err)
	}
	return restore
}
