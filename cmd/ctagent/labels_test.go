package main

import (
	"context"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/ctagent/ctagent/internal/labnet"
)

// A process may name itself anything (prctl PR_SET_NAME, or the name it was
// executed under), so /proc/PID/comm need not be UTF-8, and neither need a
// name under /var/run/netns. Such a label value must not make Collect panic
// (client_golang refuses invalid UTF-8, and the rest of the scrape is lost):
// it is exported with U+FFFD in place of the bad bytes.
func TestInvalidUTF8Comm(t *testing.T) {
	labnet.Require(t, "ip", "conntrack")
	n := labnet.New(t)
	comm := "ct-\xff\xfebad"
	labnet.StartProc(t, n, comm)
	args := labnet.InsertArgs("udp", netip.MustParseAddrPort("10.71.0.1:1"), netip.MustParseAddrPort("10.71.0.2:2"))
	if err := n.CTInsert(args...); err != nil {
		t.Fatal(err)
	}

	d := startInProcess(t, func(ctx context.Context, logs io.Writer) error {
		return run(ctx, []string{"--web.listen-address=127.0.0.1:0", "--tracer.backend=netlink",
			"--metrics.labels=netns_name,comm", "--log.format=json"}, io.Discard, logs)
	})
	s := scrapeMetrics(t, d.addr)
	want := map[string]string{"netns_name": n.Name, "comm": strings.ToValidUTF8(comm, "\uFFFD")}
	if err := s.labelled(strconv.FormatUint(uint64(n.Inode), 10), want); err != nil {
		t.Errorf("%v\n%s\n%s", err, s.lines("ctagent_conntrack_kernel_entries"), d.logs.String())
	}
}
