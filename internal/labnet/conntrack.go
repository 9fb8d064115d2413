package labnet

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Record is one entry as conntrack -L -o extended lists it.
type Record struct {
	Family   uint8         // 2 (AF_INET) or 10 (AF_INET6)
	Protocol uint8         // IPPROTO_*
	Timeout  time.Duration // time left
	State    string        // TCP state, e.g. ESTABLISHED; "" for other protocols
	Flags    []string      // ASSURED, UNREPLIED, ...
	Line     string        // the whole line
}

// Has reports whether the entry carries flag (e.g. "ASSURED").
func (r Record) Has(flag string) bool { return slices.Contains(r.Flags, flag) }

// CTList lists n's conntrack table, IPv4 and IPv6, with conntrack -L.
func (n *NS) CTList() []Record {
	n.t.Helper()
	var out []Record
	for _, fam := range []string{"ipv4", "ipv6"} {
		for _, line := range strings.Split(n.MustExec("conntrack", "-L", "-f", fam, "-o", "extended"), "\n") {
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

// ParseRecord parses one line of conntrack -L -o extended: "ipv4 2 tcp 6
// 117 SYN_SENT src=... dst=... sport=... dport=... [UNREPLIED] src=...
// mark=0 use=1".
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
	for _, tok := range f[5:] {
		switch {
		case strings.HasPrefix(tok, "["):
			r.Flags = append(r.Flags, strings.Trim(tok, "[]"))
		case !strings.Contains(tok, "="):
			r.State = tok
		}
	}
	return r, nil
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
// port of src. extra is appended, e.g. "-u", "SEEN_REPLY,ASSURED".
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
