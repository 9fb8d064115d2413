package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/ctagent/ctagent/internal/labnet"
	"github.com/ctagent/ctagent/pkg/logging"
	"github.com/ctagent/ctagent/pkg/tracer"
)

// Namespaces made while the daemon runs have their entries at the scrape
// right after their entries were made, with the namespace rescan and the
// reconciliation an hour away: a named namespace is found when its mount
// appears (the netlink backend listens in it and the exporter dumps it
// then), whether a process is in it or not. The scrapes are polled for at
// most a few seconds, for the netlink listener to deliver the last events.
func TestDaemonFindsNewNamespacesAtOnce(t *testing.T) {
	labnet.Require(t, "ip", "nft", "conntrack")
	const bound = 3 * time.Second // far below the rescan and reconciliation intervals
	cfg, err := parseArgs([]string{
		"--web.listen-address=127.0.0.1:0", "--tracer.backend=auto", "--bpf.pin-path=", "--log.format=json", "--log.level=debug",
		"--metrics.labels=netns_name", "--netns.rescan-interval=1h", "--reconcile.interval=1h",
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	d := startInProcess(t, func(ctx context.Context, logs io.Writer) error {
		log, err := logging.New(logs, cfg.logLevel, cfg.logFormat)
		if err != nil {
			return err
		}
		return runDaemon(ctx, cfg, log)
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.logs.String())
		}
	})
	if code, body := httpGet(t, d.addr, "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz: %d %s", code, body)
	}
	var backend string
	scrapeMetrics(t, d.addr).each("", "ctagent_tracer_info", func(_ string, l map[string]string, _ *dto.Metric) { backend = l["backend"] })

	// check polls the scrapes until the entries of n, by family and
	// protocol, are conntrack -L's there and sum to want.
	check := func(what string, n *labnet.NS, want int) {
		t.Helper()
		netns := strconv.FormatUint(uint64(n.Inode), 10)
		start, scrapes := time.Now(), 0
		labnet.Eventually(t, bound, func() error {
			sc := scrapeMetrics(t, d.addr)
			scrapes++
			got := map[string]int{}
			sc.each(netns, "ctagent_conntrack_entries", func(_ string, l map[string]string, m *dto.Metric) {
				if v := int(m.GetGauge().GetValue()); v != 0 {
					got[l["family"]+"/"+l["protocol"]] = v
				}
			})
			truth := map[string]int{}
			for _, r := range n.CTList() {
				truth[tracer.FamilyName(r.Family)+"/"+tracer.ProtocolName(r.Protocol)]++
			}
			if !maps.Equal(got, truth) || sc.entries(netns) != want {
				return fmt.Errorf("%s (netns %s): ctagent_conntrack_entries %v (sum %d), conntrack -L %v, want %d in all",
					what, netns, got, sc.entries(netns), truth, want)
			}
			return nil
		})
		t.Logf("%s: %d entries, right at scrape %d, %v after the check began", what, want, scrapes, time.Since(start).Round(time.Millisecond))
	}

	// A name and nothing else, as "ip netns add" leaves it: 50 entries
	// over ctnetlink.
	bare := labnet.New(t)
	const inserts = 50
	lines := make([]string, inserts)
	for i := range lines {
		lines[i] = fmt.Sprintf("-I -s 192.0.2.1 -d 192.0.2.2 -p tcp --sport %d --dport 443 --state ESTABLISHED -t 600", 10000+i)
	}
	bare.CTLoad(lines)
	if n := bare.CTCount(); n != inserts {
		t.Fatalf("conntrack -C %d after %d inserts", n, inserts)
	}
	check("named namespace without a process", bare, inserts)

	// A client with a process in it and a server, real traffic between
	// them, and inserts on top.
	client, server := labnet.New(t), labnet.New(t)
	link := labnet.Connect(t, client, server)
	client.EnableConntrack()
	server.EnableConntrack()
	labnet.StartProc(t, client, "ct-client")
	server.ServeTCP(8080)
	server.ServeUDP(5353)
	for range 3 {
		client.TCPRoundTrip(netip.AddrPortFrom(link.B4, 8080))
		client.TCPRoundTrip(netip.AddrPortFrom(link.B6, 8080))
	}
	client.UDPRoundTrip(netip.AddrPortFrom(link.B4, 5353))
	client.UDPRoundTrip(netip.AddrPortFrom(link.B6, 5353))
	client.Ping(link.B4, 301)
	client.Ping(link.B6, 302)
	for i := range 5 {
		src := netip.AddrPortFrom(netip.MustParseAddr("198.51.100.1"), uint16(20000+i))
		if err := client.CTInsert(labnet.InsertArgs("udp", src, netip.MustParseAddrPort("198.51.100.2:53"))...); err != nil {
			t.Fatal(err)
		}
	}
	check("client with a process, traffic and inserts", client, int(client.CTCount()))
	check("server with traffic", server, int(server.CTCount()))
	t.Logf("backend %s", backend)

	// None of it was a warning: no listener that failed to start, no
	// table dump that failed.
	for _, l := range strings.Split(d.logs.String(), "\n") {
		if !strings.Contains(l, `"level":"error"`) && !strings.Contains(l, `"level":"warn"`) {
			continue
		}
		// A sandbox's PID 1 may be closed even to root (this host's is).
		if strings.Contains(l, `"msg":"Not allowed to read the network namespace of some processes`) {
			continue
		}
		t.Errorf("daemon logged %s", l)
	}
}
