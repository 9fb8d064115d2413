package e2e

import (
	"bufio"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ctagent/ctagent/internal/labnet"
)

// ctagent events --output text with the netlink backend: two ctnetlink
// inserts and a delete in one lab namespace give [NEW], [NEW], [DESTROY]
// lines that name the tuples and the namespace, none of another namespace;
// SIGTERM ends it with status 0.
func TestEventsText(t *testing.T) {
	requireRoot(t)
	requireTool(t, "ip", "iproute2")
	requireTool(t, "nft", "nftables")
	requireTool(t, "conntrack", "conntrack")
	labnet.RemoveStale(t)
	// No daemon at this --server: the command traces by itself.
	stderr := eventsTextScenario(t, "--server=http://127.0.0.1:1", "--tracer.backend=netlink", "--netns.rescan-interval=1s")
	if !strings.Contains(stderr, "tracing by itself") {
		t.Errorf("no line saying it traces by itself without a daemon:\n%s", stderr)
	}
}

// TestEventsFromDaemon: with a daemon at --server, ctagent events prints the
// daemon's events (the daemon turns its stream on while the client listens,
// and off when it leaves) and starts no tracer of its own; when the daemon
// goes away mid-stream, the command says so and fails.
func TestEventsFromDaemon(t *testing.T) {
	requireRoot(t)
	requireTool(t, "ip", "iproute2")
	requireTool(t, "nft", "nftables")
	requireTool(t, "conntrack", "conntrack")
	labnet.RemoveStale(t)
	d := startDaemon(t, "run", "--tracer.backend=netlink", "--netns.rescan-interval=1s")
	d.waitReady(30 * time.Second)
	stderr := eventsTextScenario(t, "--server=http://"+d.addr)
	if strings.Contains(stderr, "tracing by itself") || strings.Contains(stderr, "Tracer attached") {
		t.Errorf("ctagent events started a tracer of its own although a daemon runs:\n%s", stderr)
	}
	d.waitLog("event stream on: a client listens", 5*time.Second)
	d.waitLog("event stream off: no client listens", 10*time.Second)

	// The daemon goes away while a client listens.
	cmd := exec.Command(binary, "events", "--server=http://"+d.addr, "--log.format=json")
	var out strings.Builder
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	d.waitLogCount("event stream on: a client listens", 2, 10*time.Second)
	if code, _ := d.signal(syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Errorf("daemon exit code %d after SIGTERM with a client listening", code)
	}
	select {
	case err := <-exited:
		if err == nil || !strings.Contains(out.String(), "ended the event stream") {
			t.Errorf("ctagent events after the daemon went away: %v\n%s", err, out.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Error("ctagent events still running 10s after its daemon went away")
	}
}

// eventsTextScenario runs ctagent events --output text with args in one
// lab namespace, makes a tcp insert, a udp insert and a delete there (and
// inserts in another one), checks the lines, stops the command with
// SIGTERM and returns its stderr.
func eventsTextScenario(t *testing.T, args ...string) string {
	t.Helper()
	ns, other := addNetns(t), addNetns(t)
	cmd, lines, exited, stderr := startEvents(t, append([]string{"--output", "text", "--netns", ns.Name, "--log.format=json"}, args...)...)
	next := func(timeout time.Duration, what string) string {
		t.Helper()
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("ctagent events ended before %s: %v", what, <-exited)
			}
			t.Logf("line: %s", line)
			return line
		case <-time.After(timeout):
			t.Fatalf("no %s within %s", what, timeout)
		}
		return ""
	}

	// Insert until a line arrives: the tracer may still be subscribing.
	var got []string
	sport := 50000
	deadline := time.Now().Add(20 * time.Second)
	for len(got) == 0 {
		insert(t, other, "tcp", sport)
		insert(t, ns, "tcp", sport)
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("ctagent events ended: %v", <-exited)
			}
			got = append(got, line)
		case <-time.After(500 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("no event within 20s")
			}
			sport++
		}
	}
	insert(t, ns, "udp", 50999)
	deleteEntry(t, ns, "tcp", sport)
	for !strings.HasPrefix(strings.TrimSpace(got[len(got)-1]), "[DESTROY]") {
		got = append(got, next(10*time.Second, "[DESTROY] line"))
	}

	owner := fmt.Sprintf(" netns=%d netns_name=%s", ns.Inode, ns.Name)
	tcp := fmt.Sprintf(" tcp      6 ESTABLISHED src=192.0.2.1 dst=192.0.2.2 sport=%d dport=80 ", sport)
	udp := " udp      17 src=192.0.2.1 dst=192.0.2.2 sport=50999 dport=80 "
	want := map[string]bool{"[NEW]" + tcp: false, "[NEW]" + udp: false, "[DESTROY]" + tcp: false}
	for _, line := range got {
		// The owner ends the line; a daemon's resolver may have seen a
		// process in the namespace too (comm=conntrack, the inserts).
		if i := strings.Index(line, owner); i < 0 || !strings.HasPrefix(line[i+len(owner):]+" ", " ") {
			t.Errorf("line does not end in %q (then other owner fields): %q", owner, line)
		}
		for w := range want {
			if strings.HasPrefix(strings.TrimSpace(line), w) {
				want[w] = true
			}
		}
	}
	for w, seen := range want {
		if !seen {
			t.Errorf("no line starting %q in\n%s", w, strings.Join(got, "\n"))
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for range lines {
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("ctagent events after SIGTERM: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("ctagent events did not end within 5s of SIGTERM")
	}
	return stderr.String()
}

// startEvents starts ctagent events with args; lines gets its stdout lines
// (closed at its end), exited its exit, stderr collects its log. It is
// killed at the end of the test.
func startEvents(t *testing.T, args ...string) (cmd *exec.Cmd, lines <-chan string, exited <-chan error, stderr *strings.Builder) {
	t.Helper()
	cmd = exec.Command(binary, append([]string{"events"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr = &strings.Builder{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exitc, linec := make(chan error, 1), make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			linec <- sc.Text()
		}
		close(linec)
		exitc <- cmd.Wait()
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if t.Failed() {
			t.Logf("ctagent events stderr:\n%s", stderr.String())
		}
	})
	return cmd, linec, exitc, stderr
}

// waitLogCount waits until the daemon logged msg n times.
func (d *daemon) waitLogCount(msg string, n int, timeout time.Duration) {
	d.t.Helper()
	count := func() int {
		d.mu.Lock()
		defer d.mu.Unlock()
		c := 0
		for _, l := range d.logs {
			if l.str("msg") == msg {
				c++
			}
		}
		return c
	}
	if !labnet.WaitFor(timeout, func() bool { return count() >= n }) {
		d.t.Fatalf("%q logged %d times within %s, want %d", msg, count(), timeout, n)
	}
}

// TestEventsFilters: ctagent events --server passes --proto and --type to
// the daemon, which sends only what they select: a client of created UDP
// events sees no TCP event and no destroyed one, a client of destroyed
// events sees both protocols' destroys and no creation.
func TestEventsFilters(t *testing.T) {
	requireRoot(t)
	requireTool(t, "ip", "iproute2")
	requireTool(t, "conntrack", "conntrack")
	labnet.RemoveStale(t)
	d := startDaemon(t, "run", "--tracer.backend=netlink", "--netns.rescan-interval=1s")
	d.waitReady(30 * time.Second)
	ns := addNetns(t)
	server := "--server=http://" + d.addr
	_, newUDP, exited1, _ := startEvents(t, server, "--output=text", "--netns="+ns.Name, "--proto=udp", "--type=created")
	_, destroyed, exited2, _ := startEvents(t, server, "--output=text", "--netns="+ns.Name, "--type", "destroyed")
	d.waitLogCount("event stream on: a client listens", 1, 10*time.Second)

	// Until both listen: the clients may still be connecting.
	seen1, seen2 := false, false
	for sport := 30000; !seen1 || !seen2; sport++ {
		if sport == 30040 {
			t.Fatal("no event within 40 rounds")
		}
		insert(t, ns, "udp", sport)
		deleteEntry(t, ns, "udp", sport)
		timeout := time.After(500 * time.Millisecond)
	drain:
		for {
			select {
			case _, ok := <-newUDP:
				if !ok {
					t.Fatalf("ctagent events --type=created ended: %v", <-exited1)
				}
				seen1 = true
			case _, ok := <-destroyed:
				if !ok {
					t.Fatalf("ctagent events --type=destroyed ended: %v", <-exited2)
				}
				seen2 = true
			case <-timeout:
				break drain
			}
		}
	}

	insert(t, ns, "tcp", 40000)
	deleteEntry(t, ns, "tcp", 40000)
	insert(t, ns, "udp", 40001)
	deleteEntry(t, ns, "udp", 40001)
	insert(t, ns, "udp", 40002)      // the last line of the created/udp client
	deleteEntry(t, ns, "udp", 40002) // the last line of the destroyed client

	// until reads lines up to the one that contains last, and returns them.
	until := func(lines <-chan string, exited <-chan error, last string) []string {
		t.Helper()
		var got []string
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("ctagent events ended: %v", <-exited)
				}
				got = append(got, l)
				if strings.Contains(l, last) {
					return got
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("no line with %q within 20s; got\n%s", last, strings.Join(got, "\n"))
			}
		}
	}
	got := until(newUDP, exited1, "sport=40002 ")
	t.Logf("--proto=udp --type=created:\n%s", strings.Join(got, "\n"))
	for _, l := range got {
		if !strings.HasPrefix(strings.TrimSpace(l), "[NEW] udp ") {
			t.Errorf("--proto=udp --type=created printed %q", l)
		}
	}
	if !slices.ContainsFunc(got, func(l string) bool { return strings.Contains(l, "sport=40001 ") }) {
		t.Errorf("--proto=udp --type=created: no [NEW] of sport 40001 in\n%s", strings.Join(got, "\n"))
	}
	got = until(destroyed, exited2, "sport=40002 ")
	t.Logf("--type destroyed:\n%s", strings.Join(got, "\n"))
	for _, l := range got {
		if !strings.HasPrefix(strings.TrimSpace(l), "[DESTROY] ") {
			t.Errorf("--type destroyed printed %q", l)
		}
	}
	for _, want := range []string{"[DESTROY] tcp      6 ", "[DESTROY] udp      17 "} {
		if !slices.ContainsFunc(got, func(l string) bool {
			return strings.HasPrefix(strings.TrimSpace(l), want) && strings.Contains(l, "sport=4000")
		}) {
			t.Errorf("--type destroyed: no line %q... in\n%s", want, strings.Join(got, "\n"))
		}
	}

	// A bad filter is refused before anything runs.
	if r := runCLI(t, 10*time.Second, "events", server, "--type=changed"); r.code != 2 || !strings.Contains(r.stderr, `unknown event type "changed"`) {
		t.Errorf("--type=changed: exit %d, %s", r.code, r.stderr)
	}
}
