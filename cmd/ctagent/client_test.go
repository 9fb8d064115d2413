package main

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

func TestParseArgsClient(t *testing.T) {
	cfg, err := parseArgs([]string{"list", "--server=http://h:1", "--netns=blue", "--pod=ns/p", "--proto=tcp,udp", "--state=established", "--unreplied", "-o", "json"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.client
	if cfg.command != "list" || c.server != "http://h:1" || c.filter.NetNS != "blue" || c.filter.Pod != "ns/p" ||
		!slices.Equal(c.filter.Protocols, []string{"tcp", "udp"}) || c.filter.State != "ESTABLISHED" || !c.filter.Unreplied || c.output != "json" {
		t.Errorf("list: %+v", c)
	}
	cfg, err = parseArgs([]string{"top", "--once", "--sort=failed"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.command != "top" || !cfg.client.once || cfg.client.sort != "failed" || cfg.client.server != "http://127.0.0.1:10371" {
		t.Errorf("top: %+v", cfg.client)
	}
	cfg, err = parseArgs([]string{"events", "--netns=blue", "--pod=p", "--proto=UDP", "--type=created,Destroyed"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if f := cfg.eventsFilter; f.NetNS != "blue" || f.Pod != "p" || !slices.Equal(f.Protocols, []string{"udp"}) || !slices.Equal(f.Types, []string{"created", "destroyed"}) {
		t.Errorf("events: %+v", f)
	}
	for _, args := range [][]string{
		{"events", "--type=changed"}, {"events", "--proto=bogus"},
		{"list", "--proto=bogus"}, {"list", "--state=BOGUS"}, {"list", "--output=yaml"},
		{"top", "--sort=name"}, {"top", "--interval=0s"}, {"--web.telemetry-path=/api/v1/x"},
	} {
		var usage *usageError
		if _, err := parseArgs(args, io.Discard); !errors.As(err, &usage) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
}

// A client without a daemon says so in one line and exits 1.
func TestListNoDaemon(t *testing.T) {
	var stdout, stderr strings.Builder
	err := run(context.Background(), []string{"list", "--server=127.0.0.1:1"}, &stdout, &stderr)
	if code := exitCode(err, &stderr); code != exitFailure {
		t.Errorf("exit %d, want %d", code, exitFailure)
	}
	if s := stderr.String(); !strings.Contains(s, "no ctagent daemon answers at http://127.0.0.1:1") || strings.Count(s, "\n") != 1 {
		t.Errorf("stderr %q", s)
	}
}
