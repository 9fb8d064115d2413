package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ctagent/ctagent/internal/labnet"
)

// The clients (top, list, events) against a daemon that serves TLS, needs
// a client certificate and basic auth: with an --http.config.file in the
// Prometheus format (CA, client certificate, basic_auth) they work, and
// with user:pass in the --server URL instead of basic_auth too; without
// the certificate, the CA or the password they fail with the reason.
func TestClientsTLS(t *testing.T) {
	requireRoot(t)
	requireTool(t, "ip", "iproute2")
	requireTool(t, "conntrack", "conntrack")
	labnet.RemoveStale(t)
	p := newPKI(t, "clients")
	password, hash := newPassword(t)
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	webConfig := write("web.yml", fmt.Sprintf(`tls_server_config:
  cert_file: %s
  key_file: %s
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: %s
basic_auth_users:
  operator: %s
`, p.serverCert, p.serverKey, p.ca, hash))
	write("password", password)
	tlsConfig := fmt.Sprintf(`tls_config:
  ca_file: %s
  cert_file: %s
  key_file: %s
`, p.ca, p.clientCert, p.clientKey)
	// password_file relative to the config file, as Prometheus reads it.
	full := write("client.yml", tlsConfig+"basic_auth:\n  username: operator\n  password_file: password\n")
	noAuth := write("client-noauth.yml", tlsConfig)
	noCert := write("client-nocert.yml", fmt.Sprintf("tls_config:\n  ca_file: %s\nbasic_auth:\n  username: operator\n  password_file: password\n", p.ca))

	ns := addNetns(t)
	insert(t, ns, "tcp", 23000)
	d := startDaemon(t, "--tracer.backend=netlink", "--netns.rescan-interval=1s", "--web.config.file="+webConfig)
	server := "https://" + d.addr
	withPassword := "https://operator:" + password + "@" + d.addr

	// top --once: the namespace's line, once the daemon is ready.
	var top result
	labnet.Eventually(t, 30*time.Second, func() error {
		top = runCLI(t, 20*time.Second, "top", "--once", "--server", server, "--http.config.file", full)
		if top.code != 0 || !strings.Contains(top.stdout, fmt.Sprintf("%d %-20s ", ns.Inode, ns.Name)) {
			return fmt.Errorf("top --once: exit %d\n%s%s", top.code, top.stdout, top.stderr)
		}
		return nil
	})

	for i, tc := range []struct{ name, server, file string }{
		{"basic_auth in the file", server, full},
		{"user:pass in the URL", withPassword, noAuth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, 20*time.Second, "list", "--server", tc.server, "--http.config.file", tc.file, "--netns", ns.Name, "--proto", "tcp")
			if r.code != 0 || !strings.Contains(r.stdout, "sport=23000 dport=80") || strings.Count(r.stdout, "\n") != 1 {
				t.Errorf("list: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			r = runCLI(t, 20*time.Second, "top", "--once", "--server", tc.server, "--http.config.file", tc.file)
			if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("%d %-20s ", ns.Inode, ns.Name)) {
				t.Errorf("top --once: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			// events: a line for an entry made while it listens.
			_, lines, exited, _ := startEvents(t, "--server", tc.server, "--http.config.file", tc.file, "--netns", ns.Name, "--output", "text")
			var got string
			for sport := 23100 + 100*i; got == "" && sport < 23140+100*i; sport++ {
				insert(t, ns, "udp", sport)
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatalf("events ended: %v", <-exited)
					}
					got = l
				case <-time.After(500 * time.Millisecond):
				}
			}
			if !strings.HasPrefix(strings.TrimSpace(got), "[NEW] udp ") {
				t.Errorf("events over TLS: first line %q", got)
			}
		})
	}

	// Without a client certificate the TLS 1.3 client learns of the refusal
	// when it writes or reads next: the alert, or a closed connection.
	for _, tc := range []struct {
		name, server, file string
		want               []string
	}{
		{"no config", server, "", []string{"certificate signed by unknown authority"}},
		// Over HTTP/2 the closed connection may surface as the transport's
		// own "client conn could not be established" (seen 2 in 6 runs).
		{"no client certificate", server, noCert, []string{"certificate required", "broken pipe", "connection reset by peer", "EOF", "client conn could not be established"}},
		{"no password", server, noAuth, []string{"401 Unauthorized"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, args := range [][]string{{"list"}, {"top", "--once"}} {
				args = append(args, "--server", tc.server)
				if tc.file != "" {
					args = append(args, "--http.config.file", tc.file)
				}
				r := runCLI(t, 20*time.Second, args...)
				if r.code != 1 || !slices.ContainsFunc(tc.want, func(w string) bool { return strings.Contains(r.stderr, w) }) || strings.Contains(r.stderr, password) {
					t.Errorf("%v: exit %d, want 1 and %q: %s", args, r.code, tc.want, r.stderr)
				}
			}
		})
	}

	bad := write("bad.yml", "tls_config:\n  ca_fil: x\n")
	if r := runCLI(t, 10*time.Second, "top", "--once", "--http.config.file", bad); r.code != 2 || !strings.Contains(r.stderr, "--http.config.file") {
		t.Errorf("bad --http.config.file: exit %d, %s", r.code, r.stderr)
	}
}
