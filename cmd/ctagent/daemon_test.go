package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer collects log lines written by another goroutine.
type syncBuffer struct {
	mu sync.Mutex
	sb strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sb.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sb.String()
}

func openFDs(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		out = append(out, e.Name()+" -> "+target)
	}
	return out
}

// The daemon in-process: it becomes ready, stops on cancel within the
// shutdown budget, and leaves no file descriptor behind (BPF links and
// netlink sockets closed, listener closed).
func TestRunDaemonCleanShutdown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (ctnetlink sockets in every network namespace)")
	}
	// The runtime's netpoller keeps its epoll descriptors: create them first.
	if l, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		l.Close()
	}
	before := openFDs(t)

	d := startInProcess(t, func(ctx context.Context, logs io.Writer) error {
		return run(ctx, []string{"--web.listen-address=127.0.0.1:0", "--tracer.backend=auto", "--bpf.pin-path=", "--log.format=json"}, io.Discard, logs)
	})
	addr := d.addr
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz: %s", resp.Status)
	}
	during := len(openFDs(t))

	start := time.Now()
	if err := d.stop(t); err != nil {
		t.Fatalf("run: %v", err)
	}
	if took := time.Since(start); took > shutdownTimeout {
		t.Errorf("shutdown took %s", took)
	}
	if !strings.Contains(d.logs.String(), `"msg":"Stopped"`) {
		t.Errorf("no Stopped log line:\n%s", d.logs.String())
	}
	// The HTTP client closes its connection in a goroutine of its own.
	client.CloseIdleConnections()
	after := openFDs(t)
	for i := 0; i < 20 && len(after) != len(before); i++ {
		time.Sleep(50 * time.Millisecond)
		after = openFDs(t)
	}
	if len(after) != len(before) {
		t.Errorf("%d descriptors before, %d while running, %d after:\nbefore %v\nafter  %v\n%s",
			len(before), during, len(after), before, after, socketTable())
	}
}

// inProcess is the daemon run in this test process.
type inProcess struct {
	addr   string      // where it listens
	logs   *syncBuffer // its log, JSON lines
	cancel context.CancelFunc
	done   chan struct{} // closed when start returned, with err
	err    error
}

// startInProcess runs start (run, or runDaemon with a config of the test's)
// in a goroutine that logs JSON lines to d.logs, and waits up to 30s for
// its "Ready" log line, which names the address it listens on. t.Cleanup
// stops it unless stop did.
func startInProcess(t *testing.T, start func(ctx context.Context, logs io.Writer) error) *inProcess {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d := &inProcess{logs: &syncBuffer{}, cancel: cancel, done: make(chan struct{})}
	go func() {
		d.err = start(ctx, d.logs)
		close(d.done)
	}()
	t.Cleanup(func() {
		if err := d.stop(t); err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for d.addr == "" {
		sc := bufio.NewScanner(strings.NewReader(d.logs.String()))
		for sc.Scan() {
			var l map[string]any
			if json.Unmarshal(sc.Bytes(), &l) == nil && l["msg"] == "Ready" {
				d.addr, _ = l["address"].(string)
			}
		}
		select {
		case <-d.done:
			t.Fatalf("the daemon returned %v before it was ready:\n%s", d.err, d.logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready within 30s:\n%s", d.logs.String())
		}
	}
	return d
}

// stop cancels the daemon's context and returns what it returned; it fails
// t if that takes longer than the shutdown budget and a second.
func (d *inProcess) stop(t *testing.T) error {
	t.Helper()
	d.cancel()
	select {
	case <-d.done:
		return d.err
	case <-time.After(shutdownTimeout + time.Second):
		t.Fatalf("the daemon did not return within %s of the cancel", shutdownTimeout+time.Second)
		return nil
	}
}

// socketTable returns this process's socket tables, to name a leak.
func socketTable() string {
	var b strings.Builder
	for _, f := range []string{"tcp", "tcp6", "netlink", "unix"} {
		data, _ := os.ReadFile("/proc/self/net/" + f)
		b.WriteString("/proc/self/net/" + f + ":\n" + string(data))
	}
	return b.String()
}
