package e2e

import (
	"bufio"
	"fmt"
	"os/exec"
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
	ns, other := addNetns(t), addNetns(t)

	cmd := exec.Command(binary, "events", "--output", "text", "--netns", ns.Name,
		"--tracer.backend=netlink", "--netns.rescan-interval=1s", "--log.format=json")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if t.Failed() {
			t.Logf("ctagent events stderr:\n%s", stderr.String())
		}
	})
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
		if !strings.HasSuffix(line, owner) {
			t.Errorf("line does not end in %q: %q", owner, line)
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
}
