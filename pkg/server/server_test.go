package server

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/exporter-toolkit/web"
)

// webConfig is what exporter-toolkit's kingpinflag gives: listen on addrs.
func webConfig(addrs ...string) *web.FlagConfig {
	systemd, file := false, ""
	return &web.FlagConfig{WebListenAddresses: &addrs, WebSystemdSocket: &systemd, WebConfigFile: &file}
}

func TestHandler(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "ctagent_test", Help: "test"}))
	s := New(Config{Web: webConfig(":0"), Registry: reg, MetricsPath: "/metrics"})
	s.NotReady("tracer not attached yet")
	s.Handle("/api/events", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "events") }),
		Link{Text: "Events", Description: "live events"})
	h, err := s.handler()
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "tracer not attached") {
		t.Errorf("/readyz before: %d %q", code, body)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	if code, body := get("/"); code != 200 || !strings.Contains(body, "/metrics") || !strings.Contains(body, "/api/events") {
		t.Errorf("/: %d %q", code, body)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "ctagent_test 0") {
		t.Errorf("/metrics: %d %q", code, body)
	}
	if code, body := get("/api/events"); code != 200 || body != "events" {
		t.Errorf("/api/events: %d %q", code, body)
	}
	baseline := false
	s.Ready(func() error {
		if !baseline {
			return errors.New("baseline not loaded")
		}
		return nil
	})
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "baseline") {
		t.Errorf("/readyz check failing: %d %q", code, body)
	}
	baseline = true
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz after: %d", code)
	}
}

// Metrics at / leave no room for the landing page.
func TestMetricsAtRoot(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "ctagent_test", Help: "test"}))
	h, err := New(Config{Web: webConfig(":0"), Registry: reg, MetricsPath: "/"}).handler()
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if !strings.Contains(rec.Body.String(), "ctagent_test 0") {
		t.Errorf("/: %d %q", rec.Code, rec.Body.String())
	}
}

// Every listen address is served, and one that cannot be listened on
// fails the start at once.
func TestListenAddresses(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "hi") })
	start := func(addrs ...string) (*Server, error) {
		s := New(Config{Web: webConfig(addrs...), Registry: prometheus.NewRegistry(), MetricsPath: "/metrics"})
		s.Handle("/{$}", h, Link{})
		return s, s.Start()
	}
	s, err := start("127.0.0.1:0", "[::1]:0")
	if err != nil {
		t.Skipf("skipped: no IPv6 loopback here: %v", err)
	}
	for _, ln := range s.lns {
		resp, err := http.Get("http://" + ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "hi" {
			t.Errorf("%s: %q", ln.Addr(), body)
		}
	}
	if len(s.lns) != 2 {
		t.Errorf("%d listeners, want 2", len(s.lns))
	}

	if _, err := start("127.0.0.1:0", s.Addr()); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("second server on %s: %v", s.Addr(), err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Error(err)
	}
	if err := <-s.Done(); err != nil {
		t.Errorf("Done after Shutdown: %v", err)
	}
}
