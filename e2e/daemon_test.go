package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"golang.org/x/crypto/bcrypt"

	"github.com/ctagent/ctagent/internal/labnet"
)

// entriesByNetns sums ctagent_conntrack_entries over family and protocol,
// by netns label; it also returns the netns_name label of each.
func entriesByNetns(mfs map[string]*dto.MetricFamily) (map[string]int, map[string]string) {
	counts, names := map[string]int{}, map[string]string{}
	mf := mfs["ctagent_conntrack_entries"]
	if mf == nil {
		return counts, names
	}
	for _, m := range mf.GetMetric() {
		l := labelsOf(m)
		counts[l["netns"]] += int(m.GetGauge().GetValue())
		names[l["netns"]] = l["netns_name"]
	}
	return counts, names
}

// The daemon against real namespaces with real entries: per-namespace
// entries equal conntrack -C, then a real Prometheus scrapes it and sees the
// same, with the alert rules loaded and healthy.
func TestDaemon(t *testing.T) {
	requireRoot(t)
	requireTool(t, "ip", "iproute2")
	requireTool(t, "nft", "nftables")
	requireTool(t, "conntrack", "conntrack")
	labnet.RemoveStale(t)

	// Three namespaces: injected TCP entries, injected UDP entries plus a
	// real TCP connection over loopback, and an empty one.
	a, b, c := addNetns(t), addNetns(t), addNetns(t)
	for i := range 5 {
		insert(t, a, "tcp", 10000+i)
	}
	for i := range 3 {
		insert(t, b, "udp", 20000+i)
	}
	tcpConnect(b)
	nss := []*labnet.NS{a, b, c}

	d := startDaemon(t, "--tracer.backend=auto", "--netns.rescan-interval=1s", "--reconcile.interval=5s")
	d.waitReady(30 * time.Second)

	t.Run("backend", func(t *testing.T) {
		want := expectedBackend()
		l, ok := d.findLog("Tracer attached on a fallback backend")
		if !ok {
			l, ok = d.findLog("Tracer attached")
		}
		if !ok {
			t.Fatal("no backend selection log line")
		}
		if got := l.str("backend"); got != want {
			t.Errorf("log says backend %q, want %q: %v", got, want, l)
		}
		if want == "netlink" {
			for _, refused := range []string{"refused_fentry", "refused_kprobe"} {
				if l.str(refused) == "" {
					t.Errorf("log line does not say why %s: %v", refused, l)
				}
			}
		}
		mf := d.scrape()["ctagent_tracer_info"]
		if mf == nil || len(mf.GetMetric()) != 1 {
			t.Fatalf("ctagent_tracer_info: %v", mf)
		}
		if l := labelsOf(mf.GetMetric()[0]); l["backend"] != want || mf.GetMetric()[0].GetGauge().GetValue() != 1 {
			t.Errorf("ctagent_tracer_info %v, want backend=%q", l, want)
		}
	})

	t.Run("endpoints", func(t *testing.T) {
		for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready", "/": "/metrics"} {
			code, body, err := d.get(path)
			if err != nil || code != http.StatusOK || !strings.Contains(body, want) {
				t.Errorf("%s: %d %q %v", path, code, body, err)
			}
		}
		mfs := d.scrape()
		for _, name := range []string{"ctagent_build_info", "go_goroutines", "process_resident_memory_bytes", "ctagent_conntrack_limit"} {
			if mfs[name] == nil {
				t.Errorf("no %s", name)
			}
		}
		if l := labelsOf(mfs["ctagent_build_info"].GetMetric()[0]); l["version"] != testVersion {
			t.Errorf("ctagent_build_info %v", l)
		}
	})

	// matches compares the scraped entries of every test namespace with
	// conntrack -C there.
	matches := func() error {
		counts, names := entriesByNetns(d.scrape())
		for _, ns := range nss {
			key := strconv.FormatUint(uint64(ns.Inode), 10)
			want := count(ns)
			if got := counts[key]; got != want {
				return fmt.Errorf("netns %s (%s): ctagent_conntrack_entries %d, conntrack -C %d", ns.Name, key, got, want)
			}
			if want > 0 && names[key] != ns.Name {
				return fmt.Errorf("netns %s: netns_name label %q", key, names[key])
			}
		}
		return nil
	}

	t.Run("entries match conntrack", func(t *testing.T) {
		labnet.Eventually(t, 10*time.Second, matches)
		// Changes after the start arrive as events.
		insert(t, a, "udp", 30000)
		insert(t, a, "udp", 30001)
		insert(t, a, "udp", 30002)
		deleteEntry(t, a, "udp", 30002)
		insert(t, c, "tcp", 40000)
		labnet.Eventually(t, 10*time.Second, matches)
		if got := count(a); got != 7 {
			t.Errorf("ground truth in %s: %d entries, want 7", a.Name, got)
		}
		// The kernel sends no DESTROY event for an entry created before
		// ctnetlink listened: with the netlink backend the reconciliation
		// (--reconcile.interval=5s here) corrects the count.
		deleteEntry(t, b, "udp", 20000)
		labnet.Eventually(t, 15*time.Second, matches)
	})

	t.Run("prometheus", func(t *testing.T) {
		prom := startPrometheus(t, d.addr)
		labnet.Eventually(t, 30*time.Second, func() error {
			res, err := prom.query("ctagent_conntrack_entries")
			if err != nil {
				return err
			}
			got := map[string]int{}
			for _, s := range res {
				got[s.Metric["netns"]] += int(s.value())
			}
			for _, ns := range nss {
				key := strconv.FormatUint(uint64(ns.Inode), 10)
				if want := count(ns); got[key] != want {
					return fmt.Errorf("Prometheus: netns %s has %d entries, conntrack -C %d", ns.Name, got[key], want)
				}
			}
			return nil
		})
		labnet.Eventually(t, 30*time.Second, func() error {
			res, err := prom.query(`ctagent_tracer_info{backend="` + expectedBackend() + `"}`)
			if err != nil {
				return err
			}
			if len(res) != 1 {
				return fmt.Errorf("ctagent_tracer_info: %v", res)
			}
			return nil
		})
		labnet.Eventually(t, 30*time.Second, prom.rulesHealthy)
		// The fallback alert is pending: its expression matches.
		if expectedBackend() == "netlink" {
			labnet.Eventually(t, 30*time.Second, func() error { return prom.alertState("CtagentTracerFallbackBackend", "pending") })
		}
		// Every expression of the dashboard is valid PromQL.
		for _, expr := range dashboardExprs(t) {
			if _, err := prom.query(expr); err != nil {
				t.Errorf("dashboard query %s: %v", expr, err)
			}
		}
	})

	t.Run("SIGTERM", func(t *testing.T) {
		code, took := d.signal(syscall.SIGTERM, 10*time.Second)
		if code != 0 {
			t.Errorf("exit status %d after SIGTERM, want 0", code)
		}
		if took > 5*time.Second {
			t.Errorf("took %s to stop, want at most 5s", took)
		}
		if _, ok := d.findLog("Stopped"); !ok {
			t.Error(`no "Stopped" log line`)
		}
		for _, msg := range []string{"Closing the tracer", "HTTP server shutdown", "Background tasks did not stop in time", "ctagent failed"} {
			if l, ok := d.findLog(msg); ok {
				t.Errorf("shutdown logged %v", l)
			}
		}
	})
}

// SIGINT ends the daemon as cleanly as SIGTERM, even right at start.
func TestSIGINTDuringStart(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t, "--tracer.backend=auto")
	code, took := d.signal(syscall.SIGINT, 10*time.Second)
	if code != 0 || took > 5*time.Second {
		t.Errorf("exit %d after %s", code, took)
	}
	if _, ok := d.findLog("Stopped"); !ok {
		t.Error(`no "Stopped" log line`)
	}
}

// A second daemon on a busy port fails with status 1 and one log line.
func TestPortInUse(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t, "--tracer.backend=netlink")
	r := runCLI(t, 30*time.Second, "--web.listen-address="+d.addr, "--log.format=json")
	if r.code != 1 {
		t.Errorf("exit %d, want 1\n%s", r.code, r.stderr)
	}
	var l logLine
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &l); err != nil || l.str("level") != "error" ||
		!strings.Contains(l.str("error"), "address already in use") {
		t.Errorf("last line %q, want an error log line about the port", lines[len(lines)-1])
	}
}

// ctagent events prints the events of one namespace as JSON lines, with
// its identity, and ends on SIGINT.
func TestEvents(t *testing.T) {
	requireRoot(t)
	requireTool(t, "ip", "iproute2")
	requireTool(t, "nft", "nftables")
	requireTool(t, "conntrack", "conntrack")
	labnet.RemoveStale(t)
	ns, other := addNetns(t), addNetns(t)

	cmd, lines, exited, _ := startEvents(t, "--tracer.backend=auto", "--events.netns="+ns.Name,
		"--netns.rescan-interval=1s", "--log.format=json")

	// Insert until an event arrives: the tracer may still be attaching.
	type event struct {
		Type      string `json:"type"`
		NetNS     uint32 `json:"netns"`
		NetNSName string `json:"netns_name"`
		Protocol  string `json:"protocol"`
		Original  struct {
			Src   string `json:"src"`
			Sport int    `json:"sport"`
			Dport int    `json:"dport"`
		} `json:"original"`
	}
	var got []event
	deadline := time.After(20 * time.Second)
	sport := 50000
	for len(got) == 0 {
		insert(t, other, "tcp", sport)
		insert(t, ns, "tcp", sport)
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("ctagent events ended: %v", <-exited)
			}
			var ev event
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("not JSON: %q", line)
			}
			got = append(got, ev)
		case <-time.After(500 * time.Millisecond):
			sport++
		case <-deadline:
			t.Fatal("no event within 20s")
		}
	}
	deleteEntry(t, ns, "tcp", sport)
	for drain := true; drain; {
		select {
		case line := <-lines:
			var ev event
			json.Unmarshal([]byte(line), &ev)
			got = append(got, ev)
			drain = ev.Type != "destroyed"
		case <-time.After(10 * time.Second):
			t.Fatal("no destroyed event within 10s")
		}
	}
	for _, ev := range got {
		if ev.NetNS != ns.Inode || ev.NetNSName != ns.Name {
			t.Errorf("event of another namespace: %+v", ev)
		}
		if ev.Protocol != "tcp" || ev.Original.Src != "192.0.2.1" || ev.Original.Dport != 80 {
			t.Errorf("event %+v", ev)
		}
	}
	if got[0].Type != "created" || got[len(got)-1].Type != "destroyed" {
		t.Errorf("events %+v, want created ... destroyed", got)
	}

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	for range lines {
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("ctagent events after SIGINT: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("ctagent events did not end within 5s of SIGINT")
	}
}

// prometheus is a real Prometheus server scraping the daemon.
type prometheus struct {
	t    *testing.T
	base string
}

// startPrometheus runs /usr/bin/prometheus (Debian's package) on a free
// loopback port with a temporary TSDB, scraping target every second and
// loading deploy/prometheus/alerts.yml.
func startPrometheus(t *testing.T, target string) *prometheus {
	t.Helper()
	return startPrometheusJob(t, target, "")
}

// startPrometheusJob is startPrometheus with more settings for the scrape
// job (scheme, tls_config, basic_auth), YAML lines indented by four spaces.
func startPrometheusJob(t *testing.T, target, job string) *prometheus {
	t.Helper()
	bin := requireTool(t, "prometheus", "prometheus")
	dir := t.TempDir()
	rules, err := filepath.Abs(filepath.Join(repoRoot, "deploy", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %s
scrape_configs:
  - job_name: ctagent
    static_configs:
      - targets: ["%s"]
%s`, rules, target, job)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cmd := exec.Command(bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		if t.Failed() {
			t.Logf("prometheus log:\n%s", logs.String())
		}
	})
	p := &prometheus{t: t, base: "http://" + addr}
	labnet.Eventually(t, 30*time.Second, func() error {
		select {
		case <-exited:
			t.Fatalf("prometheus exited:\n%s", logs.String())
		default:
		}
		resp, err := http.Get(p.base + "/-/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/-/ready: %s", resp.Status)
		}
		return nil
	})
	return p
}

type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s promSample) value() float64 {
	str, _ := s.Value[1].(string)
	v, _ := strconv.ParseFloat(str, 64)
	return v
}

func (p *prometheus) api(path string, params url.Values, out any) error {
	resp, err := http.Get(p.base + path + "?" + params.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var env struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return fmt.Errorf("%s: %v: %s", path, err, body)
	}
	if env.Status != "success" {
		return fmt.Errorf("%s: %s", path, env.Error)
	}
	return json.Unmarshal(env.Data, out)
}

// query runs an instant query and returns its vector.
func (p *prometheus) query(q string) ([]promSample, error) {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := p.api("/api/v1/query", url.Values{"query": {q}}, &data); err != nil {
		return nil, err
	}
	if data.ResultType != "vector" {
		return nil, nil // scalars in dashboard expressions; valid all the same
	}
	var res []promSample
	return res, json.Unmarshal(data.Result, &res)
}

type promRules struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Name      string `json:"name"`
			Health    string `json:"health"`
			LastError string `json:"lastError"`
			State     string `json:"state"`
			Type      string `json:"type"`
		} `json:"rules"`
	} `json:"groups"`
}

// rulesHealthy checks that every rule of alerts.yml is loaded and was
// evaluated without error.
func (p *prometheus) rulesHealthy() error {
	var r promRules
	if err := p.api("/api/v1/rules", nil, &r); err != nil {
		return err
	}
	want := map[string]bool{"CtagentConntrackTableNearlyFull": true, "CtagentConntrackInsertFailed": true,
		"CtagentConntrackTableFullDrops": true, "CtagentDown": true, "CtagentEventsLost": true,
		"CtagentReconcileErrors": true, "CtagentNamespacesFolded": true, "CtagentTracerFallbackBackend": true}
	n := 0
	for _, g := range r.Groups {
		for _, rule := range g.Rules {
			if !want[rule.Name] {
				return fmt.Errorf("unexpected rule %s", rule.Name)
			}
			if rule.Health != "ok" || rule.LastError != "" {
				return fmt.Errorf("rule %s: health %q, error %q", rule.Name, rule.Health, rule.LastError)
			}
			n++
		}
	}
	if n != len(want) {
		return fmt.Errorf("%d rules loaded, want %d", n, len(want))
	}
	return nil
}

// alertState checks the state of an alerting rule.
func (p *prometheus) alertState(name, state string) error {
	var r promRules
	if err := p.api("/api/v1/rules", nil, &r); err != nil {
		return err
	}
	for _, g := range r.Groups {
		for _, rule := range g.Rules {
			if rule.Name == name {
				if rule.State != state {
					return fmt.Errorf("alert %s is %q, want %q", name, rule.State, state)
				}
				return nil
			}
		}
	}
	return fmt.Errorf("no alert %s", name)
}

// dashboardExprs returns the PromQL expressions of the Grafana dashboard,
// with its variables replaced by values that select everything.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "grafana", "ctagent-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	r := strings.NewReplacer("$instance", ".*", "$pod_namespace", ".*", "$__rate_interval", "1m")
	var out []string
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			out = append(out, r.Replace(tg.Expr))
		}
	}
	if len(out) < 10 {
		t.Fatalf("dashboard has %d queries", len(out))
	}
	return out
}

// --web.config.file turns on basic auth (exporter-toolkit) for every path.
func TestWebConfigBasicAuth(t *testing.T) {
	requireRoot(t)
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "web.yml")
	if err := os.WriteFile(cfg, []byte("basic_auth_users:\n  prometheus: "+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, "--tracer.backend=netlink", "--web.config.file="+cfg)
	get := func(user, pass string) int {
		req, _ := http.NewRequest(http.MethodGet, d.url("/metrics"), nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("", ""); code != http.StatusUnauthorized {
		t.Errorf("no credentials: %d, want 401", code)
	}
	if code := get("prometheus", "wrong"); code != http.StatusUnauthorized {
		t.Errorf("wrong password: %d, want 401", code)
	}
	if code := get("prometheus", "s3cret"); code != http.StatusOK {
		t.Errorf("right password: %d, want 200", code)
	}
	// The API too, and its clients take the credentials in --server.
	d.waitLog("Ready", 30*time.Second)
	host := strings.TrimPrefix(d.url(""), "http://")
	if r := runCLI(t, 10*time.Second, "top", "--once", "--server", "http://"+host); r.code != 1 || !strings.Contains(r.stderr, "401 Unauthorized") {
		t.Errorf("top without credentials: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := runCLI(t, 10*time.Second, "top", "--once", "--server", "http://prometheus:s3cret@"+host); r.code != 0 || !strings.Contains(r.stdout, "NETNS") {
		t.Errorf("top with credentials: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}

	// A web config that does not parse is a usage error.
	bad := filepath.Join(t.TempDir(), "bad.yml")
	os.WriteFile(bad, []byte("tls_server_config: [this is not a map\n"), 0o600)
	if r := runCLI(t, 10*time.Second, "--web.config.file="+bad); r.code != 2 || !strings.Contains(r.stderr, "--web.config.file") {
		t.Errorf("bad web config: exit %d, stderr %q", r.code, r.stderr)
	}
}
