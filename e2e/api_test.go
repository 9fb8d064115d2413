package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ctagent/ctagent/internal/labnet"
)

// apiEntry is the part of an /api/v1/entries line the tests check.
type apiEntry struct {
	NetNS     uint32 `json:"netns"`
	NetNSName string `json:"netns_name"`
	Protocol  string `json:"protocol"`
	TCPState  string `json:"tcp_state"`
	Original  struct {
		Src   string `json:"src"`
		Dst   string `json:"dst"`
		Sport uint16 `json:"sport"`
		Dport uint16 `json:"dport"`
	} `json:"original"`
	Timeout int64 `json:"timeout_seconds"`
}

// tupleKey is an entry's protocol and original tuple, as text.
func tupleKey(proto uint8, src, dst string, sport, dport uint16) string {
	return fmt.Sprintf("%d %s:%d>%s:%d", proto, src, sport, dst, dport)
}

// groundTruth is conntrack -L in ns, as tupleKeys, sorted.
func groundTruth(ns *labnet.NS) []string {
	var out []string
	for _, r := range ns.CTList() {
		out = append(out, tupleKey(r.Protocol, r.Original.Src.String(), r.Original.Dst.String(), r.Original.SrcPort, r.Original.DstPort))
	}
	slices.Sort(out)
	return out
}

var protoNumbers = map[string]uint8{"tcp": 6, "udp": 17, "icmp": 1}

// The API and its clients against the real daemon (netlink backend) and
// real namespaces: list and top show what conntrack -L shows, a client
// that leaves mid-stream costs the daemon nothing, and a client without a
// daemon says so.
func TestAPIClients(t *testing.T) {
	requireRoot(t)
	requireTool(t, "ip", "iproute2")
	requireTool(t, "conntrack", "conntrack")
	labnet.RemoveStale(t)

	a, b, big := addNetns(t), addNetns(t), addNetns(t)
	for i := range 4 {
		insert(t, a, "tcp", 11000+i)
	}
	for i := range 2 {
		insert(t, b, "udp", 21000+i)
	}
	insert(t, b, "tcp", 22000)
	// Enough entries that the stream cannot sit in socket buffers.
	const bigN = 20000
	lines := make([]string, bigN)
	for i := range lines {
		lines[i] = fmt.Sprintf("-I -s 10.9.%d.%d -d 192.0.2.2 -p udp --sport %d --dport 80 -t 600", i/250, i%250+1, 1000+i%50000)
	}
	big.CTLoad(lines)

	d := startDaemon(t, "--tracer.backend=netlink", "--netns.rescan-interval=1s", "--reconcile.interval=5s")
	d.waitReady(30 * time.Second)
	server := "http://" + d.addr

	t.Run("list json", func(t *testing.T) {
		for _, ns := range []*labnet.NS{a, b} {
			r := runCLI(t, 30*time.Second, "list", "--server", server, "--netns", ns.Name, "--output", "json")
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			var got []string
			for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
				var e apiEntry
				if err := json.Unmarshal([]byte(line), &e); err != nil {
					t.Fatalf("%q: %v", line, err)
				}
				if e.NetNS != ns.Inode || e.NetNSName != ns.Name || e.Timeout <= 0 || e.Timeout > 600 {
					t.Errorf("owner or timeout: %s", line)
				}
				if e.Protocol == "tcp" && e.TCPState != "ESTABLISHED" {
					t.Errorf("state: %s", line)
				}
				got = append(got, tupleKey(protoNumbers[e.Protocol], e.Original.Src, e.Original.Dst, e.Original.Sport, e.Original.Dport))
			}
			slices.Sort(got)
			if want := groundTruth(ns); !slices.Equal(got, want) {
				t.Errorf("%s: list --output json\n%v\nconntrack -L\n%v", ns.Name, got, want)
			}
		}
	})

	t.Run("list text", func(t *testing.T) {
		r := runCLI(t, 30*time.Second, "list", "--server", server, "--netns", strconv.FormatUint(uint64(b.Inode), 10))
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		t.Logf("ctagent list --output text:\n%s", r.stdout)
		var got []string
		truth := map[string]labnet.Record{}
		for _, rec := range b.CTList() {
			truth[tupleKey(rec.Protocol, rec.Original.Src.String(), rec.Original.Dst.String(), rec.Original.SrcPort, rec.Original.DstPort)] = rec
		}
		for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			rec, err := labnet.ParseRecord(line) // the conntrack -L -o extended format
			if err != nil {
				t.Fatal(err)
			}
			k := tupleKey(rec.Protocol, rec.Original.Src.String(), rec.Original.Dst.String(), rec.Original.SrcPort, rec.Original.DstPort)
			got = append(got, k)
			want := truth[k]
			if rec.Reply != want.Reply || rec.State != want.State || !slices.Equal(rec.Flags, want.Flags) || rec.Family != want.Family {
				t.Errorf("list: %s\nconntrack -L: %s", line, want.Line)
			}
			if !strings.Contains(line, " netns="+strconv.FormatUint(uint64(b.Inode), 10)+" netns_name="+b.Name) {
				t.Errorf("no owner: %s", line)
			}
		}
		slices.Sort(got)
		if want := groundTruth(b); !slices.Equal(got, want) {
			t.Errorf("list\n%v\nconntrack -L\n%v", got, want)
		}
		// Filters: b's UDP entries only.
		r = runCLI(t, 30*time.Second, "list", "--server", server, "--netns", b.Name, "--proto", "udp")
		if n := strings.Count(r.stdout, "\n"); r.code != 0 || n != 2 || strings.Contains(r.stdout, "tcp ") {
			t.Errorf("--proto udp: exit %d, %d lines:\n%s%s", r.code, n, r.stdout, r.stderr)
		}
	})

	t.Run("top", func(t *testing.T) {
		var out string
		labnet.Eventually(t, 15*time.Second, func() error {
			r := runCLI(t, 30*time.Second, "top", "--once", "--server", server)
			if r.code != 0 {
				return fmt.Errorf("exit %d: %s", r.code, r.stderr)
			}
			out = r.stdout
			for _, ns := range []*labnet.NS{a, b, big} {
				want := fmt.Sprintf("%d %-20s %7d ", ns.Inode, ns.Name, count(ns))
				if !strings.Contains(out, want) {
					return fmt.Errorf("no line %q in\n%s", want, out)
				}
			}
			return nil
		})
		t.Logf("ctagent top --once:\n%s", out)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) < 5 || !strings.HasPrefix(lines[2], strconv.FormatUint(uint64(big.Inode), 10)+" ") {
			t.Errorf("not sorted by entries, the biggest (%s) first:\n%s", big.Name, out)
		}
		for _, l := range lines {
			if len([]rune(l)) > 80 {
				t.Errorf("wider than 80 columns: %q", l)
			}
		}
	})

	t.Run("client leaves mid-stream", func(t *testing.T) {
		resp, err := http.Get(server + "/api/v1/entries?netns=" + big.Name)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(resp.Body)
		for i := 0; i < 10 && sc.Scan(); i++ {
		}
		resp.Body.Close()
		d.waitLog("/api/v1/entries: client gone", 20*time.Second)
		if mfs := d.scrape(); mfs["ctagent_conntrack_entries"] == nil {
			t.Error("no ctagent_conntrack_entries after the client left")
		}
		// The daemon serves a whole stream again.
		r := runCLI(t, 60*time.Second, "list", "--server", server, "--netns", big.Name, "-o", "json")
		if n := strings.Count(r.stdout, "\n"); r.code != 0 || n != count(big) {
			t.Errorf("list after the client left: exit %d, %d lines, conntrack -C %d: %s", r.code, n, count(big), r.stderr)
		}
	})

	t.Run("no daemon", func(t *testing.T) {
		for _, args := range [][]string{{"list"}, {"top", "--once"}} {
			dead := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
			r := runCLI(t, 10*time.Second, append(args, "--server", dead)...)
			if r.code != 1 || !strings.Contains(r.stderr, "no ctagent daemon answers at "+dead) || r.stdout != "" {
				t.Errorf("%v: exit %d, stdout %q, stderr %q", args, r.code, r.stdout, r.stderr)
			}
		}
	})
}
