package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/ctagent/ctagent/internal/labnet"
)

// pki is a test CA with a server certificate for 127.0.0.1 and a client
// certificate, as PEM files in a temporary directory.
type pki struct {
	ca                    string // the CA certificate
	serverCert, serverKey string
	clientCert, clientKey string
	keys                  []string // PEM of every private key, to look for leaks
}

// newPKI makes a CA and the certificates it signs, valid for an hour.
func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	dir := t.TempDir()
	p := &pki{}
	write := func(file, typ string, der []byte) string {
		path := filepath.Join(dir, file)
		data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if typ == "PRIVATE KEY" {
			p.keys = append(p.keys, string(data))
		}
		return path
	}
	newKey := func() (*ecdsa.PrivateKey, []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return key, der
	}
	template := func(cn string) *x509.Certificate {
		serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
		if err != nil {
			t.Fatal(err)
		}
		return &x509.Certificate{
			SerialNumber: serial,
			Subject:      pkix.Name{CommonName: cn, Organization: []string{"ctagent e2e " + name}},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
		}
	}

	caKey, _ := newKey()
	caTmpl := template(name + " CA")
	caTmpl.IsCA, caTmpl.BasicConstraintsValid = true, true
	caTmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	p.ca = write("ca.pem", "CERTIFICATE", caDER)

	issue := func(cn string, usage x509.ExtKeyUsage, certFile, keyFile string) (string, string) {
		key, keyDER := newKey()
		tmpl := template(cn)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{usage}
		if usage == x509.ExtKeyUsageServerAuth {
			tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
			tmpl.DNSNames = []string{"localhost"}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
		if err != nil {
			t.Fatal(err)
		}
		return write(certFile, "CERTIFICATE", der), write(keyFile, "PRIVATE KEY", keyDER)
	}
	p.serverCert, p.serverKey = issue("127.0.0.1", x509.ExtKeyUsageServerAuth, "server.pem", "server-key.pem")
	p.clientCert, p.clientKey = issue("prometheus", x509.ExtKeyUsageClientAuth, "client.pem", "client-key.pem")
	return p
}

// tlsClient is an HTTP client that trusts p's CA and shows p's client
// certificate.
func (p *pki) tlsClient(t *testing.T) *http.Client {
	t.Helper()
	ca, err := os.ReadFile(p.ca)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		t.Fatal("no CA certificate in " + p.ca)
	}
	cert, err := tls.LoadX509KeyPair(p.clientCert, p.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}},
		DisableKeepAlives: true,
	}}
}

// curlResult is what a curl run printed.
type curlResult struct {
	exit   int    // curl's exit status
	status int    // the HTTP status, 0 without a response
	body   string // the response body
	stderr string
}

// runCurl runs curl -sS with args on url; the body and the status are
// taken apart from its stdout.
func runCurl(t *testing.T, curl, url string, args ...string) curlResult {
	t.Helper()
	args = append([]string{"-sS", "--max-time", "10", "-w", "\n%{http_code}"}, append(args, url)...)
	cmd := exec.Command(curl, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := curlResult{stderr: stderr.String()}
	if exit, ok := err.(*exec.ExitError); ok {
		r.exit = exit.ExitCode()
	} else if err != nil {
		t.Fatalf("curl %v: %v", args, err)
	}
	out := stdout.String()
	i := strings.LastIndexByte(out, '\n')
	if i < 0 {
		t.Fatalf("curl %v: no status in %q", args, out)
	}
	r.body = out[:i]
	r.status, _ = strconv.Atoi(out[i+1:])
	return r
}

// The web config of the Prometheus exporters with TLS, a client
// certificate required and verified, and basic auth: real clients (curl,
// and a Prometheus scraping the daemon) get the metrics with all three
// and nothing without any one of them, and neither the password nor a
// private key shows in what the daemon logs or serves.
func TestWebConfigTLSClientCert(t *testing.T) {
	requireRoot(t)
	curl := requireTool(t, "curl", "curl")
	p := newPKI(t, "trusted")
	stranger := newPKI(t, "stranger") // a CA the daemon does not trust

	password, hash := newPassword(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "web.yml")
	webConfig := fmt.Sprintf(`tls_server_config:
  cert_file: %s
  key_file: %s
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: %s
basic_auth_users:
  prometheus: %s
`, p.serverCert, p.serverKey, p.ca, hash)
	if err := os.WriteFile(cfg, []byte(webConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	passwordFile := filepath.Join(dir, "password")
	if err := os.WriteFile(passwordFile, []byte(password), 0o600); err != nil {
		t.Fatal(err)
	}

	d := startDaemon(t, "--tracer.backend=netlink", "--web.config.file="+cfg)
	base := "https://" + d.addr
	client := p.tlsClient(t)
	labnet.Eventually(t, 30*time.Second, func() error {
		req, _ := http.NewRequest(http.MethodGet, base+"/readyz", nil)
		req.SetBasicAuth("prometheus", password)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz over TLS: %s", resp.Status)
		}
		return nil
	})
	if l, ok := d.findLog("TLS is enabled."); !ok || l.str("address") != d.addr {
		t.Errorf("no TLS log line for %s: %v", d.addr, l)
	}

	// Everything the clients got, to look for secrets in at the end.
	var served []string
	auth := []string{"--cacert", p.ca, "--cert", p.clientCert, "--key", p.clientKey}
	curlDo := func(url string, args ...string) curlResult {
		t.Helper()
		r := runCurl(t, curl, url, args...)
		served = append(served, r.body, r.stderr)
		return r
	}

	t.Run("curl", func(t *testing.T) {
		r := curlDo(base+"/metrics", append(auth, "-u", "prometheus:"+password)...)
		if r.exit != 0 || r.status != http.StatusOK {
			t.Fatalf("with CA, client certificate and password: exit %d, status %d, %s", r.exit, r.status, r.stderr)
		}
		for _, want := range []string{"ctagent_build_info{", `version="` + testVersion + `"`, "ctagent_conntrack_limit"} {
			if !strings.Contains(r.body, want) {
				t.Errorf("/metrics has no %s", want)
			}
		}
		for path, want := range map[string]string{"/": "/metrics", "/healthz": "ok", "/readyz": "ready"} {
			r := curlDo(base+path, append(auth, "-u", "prometheus:"+password)...)
			if r.status != http.StatusOK || !strings.Contains(r.body, want) {
				t.Errorf("%s: status %d, %q", path, r.status, r.body)
			}
		}

		// Basic auth guards every path.
		for _, path := range []string{"/metrics", "/", "/healthz", "/readyz"} {
			if r := curlDo(base+path, auth...); r.status != http.StatusUnauthorized || strings.Contains(r.body, "ctagent_") {
				t.Errorf("%s without a password: status %d, want 401", path, r.status)
			}
		}
		if r := curlDo(base+"/metrics", append(auth, "-u", "prometheus:"+password+"x")...); r.status != http.StatusUnauthorized {
			t.Errorf("wrong password: status %d, want 401", r.status)
		}
		if r := curlDo(base+"/metrics", append(auth, "-u", "admin:"+password)...); r.status != http.StatusUnauthorized {
			t.Errorf("unknown user: status %d, want 401", r.status)
		}

		// No client certificate, or one of a CA the daemon does not
		// trust: the TLS handshake fails, and no HTTP answer comes.
		for name, args := range map[string][]string{
			"no client certificate":        {"--cacert", p.ca},
			"untrusted client certificate": {"--cacert", p.ca, "--cert", stranger.clientCert, "--key", stranger.clientKey},
		} {
			r := curlDo(base+"/metrics", append(args, "-u", "prometheus:"+password)...)
			if r.exit == 0 || r.status != 0 || strings.Contains(r.body, "ctagent_") {
				t.Errorf("%s: exit %d, status %d, want a failed handshake", name, r.exit, r.status)
			}
		}
		labnet.Eventually(t, 5*time.Second, func() error {
			if log := d.rawLog(); !strings.Contains(log, "TLS handshake error") || !strings.Contains(log, "certificate") {
				return fmt.Errorf("the daemon logged no TLS handshake error about the client certificate")
			}
			return nil
		})

		// The server is the one the CA signed; a client that trusts only
		// the system CAs refuses it (exit 60: certificate not verified).
		if r := curlDo(base+"/metrics", "--cert", p.clientCert, "--key", p.clientKey, "-u", "prometheus:"+password); r.exit != 60 {
			t.Errorf("without --cacert: exit %d, want 60 (%s)", r.exit, r.stderr)
		}

		// Plain HTTP on the TLS port gets no metrics.
		if r := curlDo("http://"+d.addr+"/metrics", "-u", "prometheus:"+password); r.status == http.StatusOK || strings.Contains(r.body, "ctagent_") {
			t.Errorf("plain HTTP: status %d, body %q", r.status, r.body)
		}
	})

	t.Run("prometheus", func(t *testing.T) {
		// Job ctagent has everything; ctagent-wrong-password differs only
		// in the password, so its failure shows that Prometheus really
		// sends what the config says.
		wrongFile := filepath.Join(dir, "wrong-password")
		if err := os.WriteFile(wrongFile, []byte(password+"x"), 0o600); err != nil {
			t.Fatal(err)
		}
		tlsJob := func(pwFile string) string {
			return fmt.Sprintf(`    scheme: https
    tls_config:
      ca_file: %s
      cert_file: %s
      key_file: %s
    basic_auth:
      username: prometheus
      password_file: %s
`, p.ca, p.clientCert, p.clientKey, pwFile)
		}
		job := tlsJob(passwordFile) + fmt.Sprintf(`  - job_name: ctagent-wrong-password
    static_configs:
      - targets: ["%s"]
`, d.addr) + tlsJob(wrongFile)
		prom := startPrometheusJob(t, d.addr, job)

		type target struct {
			Labels    map[string]string `json:"labels"`
			ScrapeURL string            `json:"scrapeUrl"`
			Health    string            `json:"health"`
			LastError string            `json:"lastError"`
		}
		labnet.Eventually(t, 30*time.Second, func() error {
			var data struct {
				ActiveTargets []target `json:"activeTargets"`
			}
			if err := prom.api("/api/v1/targets", nil, &data); err != nil {
				return err
			}
			health := map[string]target{}
			for _, tg := range data.ActiveTargets {
				health[tg.Labels["job"]] = tg
			}
			if tg := health["ctagent"]; tg.Health != "up" || tg.ScrapeURL != base+"/metrics" {
				return fmt.Errorf("target ctagent: %+v, want up at %s/metrics", tg, base)
			}
			if tg := health["ctagent-wrong-password"]; tg.Health != "down" || !strings.Contains(tg.LastError, "401") {
				return fmt.Errorf("target ctagent-wrong-password: %+v, want down with a 401", tg)
			}
			return nil
		})
		labnet.Eventually(t, 30*time.Second, func() error {
			res, err := prom.query(`ctagent_build_info{job="ctagent",version="` + testVersion + `"}`)
			if err != nil {
				return err
			}
			if len(res) != 1 || res[0].value() != 1 {
				return fmt.Errorf("ctagent_build_info in Prometheus: %v", res)
			}
			res, err = prom.query(`up`)
			if err != nil {
				return err
			}
			up := map[string]float64{}
			for _, s := range res {
				up[s.Metric["job"]] = s.value()
			}
			if up["ctagent"] != 1 || up["ctagent-wrong-password"] != 0 || len(up) != 2 {
				return fmt.Errorf("up: %v, want ctagent 1 and ctagent-wrong-password 0", up)
			}
			return nil
		})
	})

	t.Run("no secrets", func(t *testing.T) {
		// ctagent check reads the same web config.
		r := runCLI(t, 60*time.Second, "check", "--tracer.backend=netlink", "--web.config.file="+cfg)
		if r.code != 0 {
			t.Errorf("ctagent check: exit %d\n%s", r.code, r.stderr)
		}
		outputs := map[string]string{"daemon log": d.rawLog(), "check stdout": r.stdout, "check stderr": r.stderr,
			"served to clients": strings.Join(served, "\n")}
		if len(served) < 10 || !strings.Contains(outputs["served to clients"], "ctagent_build_info") {
			t.Fatalf("only %d outputs collected from the clients", len(served))
		}
		secrets := map[string]string{"password": password, "password hash": string(hash)}
		for i, k := range append(p.keys, stranger.keys...) {
			// The base64 body of a key, without the PEM lines.
			lines := strings.Split(strings.TrimSpace(k), "\n")
			secrets[fmt.Sprintf("private key %d", i)] = strings.Join(lines[1:len(lines)-1], "")
			secrets[fmt.Sprintf("private key %d, first line", i)] = lines[1]
		}
		for where, out := range outputs {
			for what, secret := range secrets {
				if strings.Contains(out, secret) {
					t.Errorf("the %s shows in the %s", what, where)
				}
			}
		}
	})
}

// Patterns of kernel addresses: x86-64 and arm64 kernels live at the top
// of the address space (ffff8..., ffffffff8...), printed with or without 0x
// or in decimal (18446603336221196288 and up, as a JSON uint64 would be);
// and any hex value wider than 32 bits written with 0x.
var kernelAddress = []*regexp.Regexp{
	regexp.MustCompile(`(?i)\b(0x)?ffff[0-9a-f]{12}\b`),
	regexp.MustCompile(`(?i)\b0x[0-9a-f]{9,16}\b`),
	regexp.MustCompile(`\b18446[0-9]{15}\b`),
}

// findKernelAddresses returns the kernel addresses in s, with some context.
func findKernelAddresses(s string) []string {
	var out []string
	for _, re := range kernelAddress {
		for _, loc := range re.FindAllStringIndex(s, 10) {
			from, to := max(loc[0]-60, 0), min(loc[1]+20, len(s))
			out = append(out, fmt.Sprintf("%q", s[from:to]))
		}
	}
	return out
}

func TestFindKernelAddresses(t *testing.T) {
	for _, s := range []string{"at ffffffff81a2b3c4 in", "ptr=0xffff888003a1b2c0", "addr 0x7ffc12345678", "FFFF800080123456",
		`"cookie":18446612686442471104`} {
		if len(findKernelAddresses(s)) == 0 {
			t.Errorf("%q: no kernel address found", s)
		}
	}
	// What ctagent does serve: inodes, counts, container IDs, versions.
	for _, s := range []string{`netns="4026532177"`, "ctagent_conntrack_limit 262144", "go_memstats_alloc_bytes 1.2345678e+07",
		`container="7a917723e2bbf4a0cc1f6b15d2e1c0c4f2cbb1e9d6a4ffff0123456789abcdef"`, "0x1f", "revision=deadbeef",
		`"cookie":1844674407370955161`, "ctagent_conntrack_created_total 18446"} {
		if got := findKernelAddresses(s); len(got) > 0 {
			t.Errorf("%q: found %v", s, got)
		}
	}
}

// By default ctagent serves the metrics, a landing page and the health
// endpoints, and nothing else (no pprof, no expvar); none of them, nor its
// log, shows a kernel address.
func TestNoKernelAddressesServed(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t)
	d.waitReady(30 * time.Second)
	for path, want := range map[string]string{"/": "/metrics", "/metrics": "ctagent_build_info", "/healthz": "ok", "/readyz": "ready"} {
		code, body, err := d.get(path)
		if err != nil || code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("%s: %d %v, want 200 with %q", path, code, err, want)
			continue
		}
		if found := findKernelAddresses(body); len(found) > 0 {
			t.Errorf("%s shows kernel addresses: %s", path, strings.Join(found, ", "))
		}
	}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=2", "/debug/pprof/heap", "/debug/vars", "/metrics/../debug/pprof/"} {
		code, body, err := d.get(path)
		if err != nil || code != http.StatusNotFound {
			t.Errorf("%s: %d %v %.80q, want 404", path, code, err, body)
		}
	}
	if found := findKernelAddresses(d.rawLog()); len(found) > 0 {
		t.Errorf("the log (at debug level) shows kernel addresses: %s", strings.Join(found, ", "))
	}
}

// newPassword is a random basic-auth password and its bcrypt hash, as a web
// config's basic_auth_users holds it.
func newPassword(t *testing.T) (password string, hash []byte) {
	t.Helper()
	secret := make([]byte, 16)
	rand.Read(secret)
	password = "pw-" + hex.EncodeToString(secret)
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return password, hash
}
