// Package e2e runs the real ctagent binary against real network namespaces,
// real conntrack entries and a real Prometheus. Tests that need root, or a
// tool that is missing, skip with the reason; everything they start is
// stopped in t.Cleanup, and all traffic stays on loopback inside namespaces
// the tests create.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// testVersion is linked into the binary under test.
const testVersion = "v0.0.0-e2e"

var (
	binary   string // the ctagent binary under test
	repoRoot string
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	repoRoot = filepath.Dir(wd)
	dir, err := os.MkdirTemp("", "ctagent-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "ctagent")
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go" // where the Go machines have it
	}
	build := exec.Command(goTool, "build", "-o", binary,
		"-ldflags", "-X main.Version="+testVersion+" -X main.Revision=e2e", "./cmd/ctagent")
	build.Dir = repoRoot
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build ./cmd/ctagent: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// requireRoot skips tests that need root.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (network namespaces, ctnetlink, /proc of every process); run the e2e tests as root")
	}
}

// requireTool skips when a program is missing, or fails under CI, where
// scripts/install-deps.sh must have installed it.
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		msg := fmt.Sprintf("%s not found (Debian package %s; scripts/install-deps.sh installs it)", name, pkg)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip("skipped: " + msg)
	}
	return path
}

// result is a finished ctagent run.
type result struct {
	code     int
	stdout   string
	stderr   string
	duration time.Duration
}

// runCLI runs ctagent to completion with a timeout.
func runCLI(t *testing.T, timeout time.Duration, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), duration: time.Since(start)}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	default:
		t.Fatalf("ctagent %v: %v", args, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("ctagent %v did not finish within %s\nstderr:\n%s", args, timeout, r.stderr)
	}
	return r
}

// logLine is one JSON log line of the daemon.
type logLine map[string]any

func (l logLine) str(key string) string {
	s, _ := l[key].(string)
	return s
}

// daemon is a running ctagent.
type daemon struct {
	t      *testing.T
	cmd    *exec.Cmd
	addr   string // host:port it listens on
	stdout *bufio.Reader
	exited chan struct{}
	err    error // of Wait, after exited

	mu   sync.Mutex
	logs []logLine
	raw  strings.Builder
}

// startDaemon starts ctagent with JSON logs on a free loopback port, and
// waits until it listens.
func startDaemon(t *testing.T, args ...string) *daemon {
	t.Helper()
	// No pins unless the test is about them: daemons of earlier tests
	// would otherwise hand their counters on.
	if !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--bpf.pin-path") }) {
		args = append(args, "--bpf.pin-path=")
	}
	args = append(args, "--web.listen-address=127.0.0.1:0", "--log.format=json", "--log.level=debug")
	cmd := exec.Command(binary, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{t: t, cmd: cmd, exited: make(chan struct{}), stdout: bufio.NewReader(stdout)}
	logsDone := make(chan struct{})
	go func() {
		defer close(logsDone)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var l logLine
			d.mu.Lock()
			d.raw.WriteString(sc.Text() + "\n")
			if json.Unmarshal(sc.Bytes(), &l) == nil {
				d.logs = append(d.logs, l)
			}
			d.mu.Unlock()
		}
	}()
	go func() {
		<-logsDone
		d.err = cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-d.exited:
		default:
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-d.exited
		}
		if t.Failed() {
			t.Logf("ctagent %v log:\n%s", args, d.rawLog())
		}
	})
	l := d.waitLog("HTTP server listening", 20*time.Second)
	d.addr = l.str("address")
	if d.addr == "" {
		t.Fatalf("no address in %v", l)
	}
	return d
}

func (d *daemon) rawLog() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.raw.String()
}

// findLog returns the first log line with msg, if any.
func (d *daemon) findLog(msg string) (logLine, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.logs {
		if l.str("msg") == msg {
			return l, true
		}
	}
	return nil, false
}

// waitLog waits for a log line with msg; it fails if ctagent exits first.
func (d *daemon) waitLog(msg string, timeout time.Duration) logLine {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if l, ok := d.findLog(msg); ok {
			return l
		}
		select {
		case <-d.exited:
			if l, ok := d.findLog(msg); ok {
				return l
			}
			d.t.Fatalf("ctagent exited (%v) before logging %q", d.err, msg)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("no %q log line within %s", msg, timeout)
		}
	}
}

func (d *daemon) url(path string) string { return "http://" + d.addr + path }

// get fetches a path of the daemon.
func (d *daemon) get(path string) (int, string, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(d.url(path))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// waitReady polls /readyz until it answers 200.
func (d *daemon) waitReady(timeout time.Duration) {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		code, body, err := d.get("/readyz")
		if err == nil && code == http.StatusOK {
			return
		}
		last = fmt.Sprintf("%d %q %v", code, body, err)
		select {
		case <-d.exited:
			d.t.Fatalf("ctagent exited before it was ready: %v", d.err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	d.t.Fatalf("/readyz not 200 within %s; last answer: %s", timeout, last)
}

// scrape fetches and parses the metrics.
func (d *daemon) scrape() map[string]*dto.MetricFamily {
	d.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, d.url("/metrics"), nil)
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		d.t.Fatalf("/metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		d.t.Fatalf("parsing /metrics: %v", err)
	}
	return mfs
}

// signal sends sig and waits for the exit; it returns the exit code and how
// long the exit took.
func (d *daemon) signal(sig syscall.Signal, timeout time.Duration) (int, time.Duration) {
	d.t.Helper()
	start := time.Now()
	if err := d.cmd.Process.Signal(sig); err != nil {
		d.t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(timeout):
		d.t.Fatalf("ctagent did not exit within %s of %v", timeout, sig)
	}
	took := time.Since(start)
	var exit *exec.ExitError
	if errors.As(d.err, &exit) {
		return exit.ExitCode(), took
	}
	if d.err != nil {
		d.t.Fatal(d.err)
	}
	return 0, took
}

// labelsOf returns a metric's labels as a map.
func labelsOf(m *dto.Metric) map[string]string {
	out := make(map[string]string, len(m.GetLabel()))
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
