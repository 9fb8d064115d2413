package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// The logfmt and JSON shapes that log pipelines parse: keys of the
// Prometheus exporters, ts first, values quoted only when needed, one line
// per entry; slog records (exporter-toolkit) reach the same output.
func TestLogfmt(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, "debug", "logfmt")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("Tracer attached", zap.String("backend", "netlink"), zap.String("why", `said "no" = twice`),
		zap.Int("n", 3), zap.Strings("hooks", []string{"a", "b"}), zap.String("empty", ""),
		zap.Ints("ints", []int{1, 2}), zap.Duration("took", 1500*time.Millisecond), zap.Error(errors.New("no such file")))
	line := buf.String()
	if !strings.HasPrefix(line, "ts=") {
		t.Errorf("ts is not first: %s", line)
	}
	for _, want := range []string{` level=info `, ` msg="Tracer attached" `, ` backend=netlink `, ` why="said \"no\" = twice" `,
		` n=3 `, ` hooks=a,b `, ` empty= `, ` ints=1,2 `, ` took=1.5s `, ` error="no such file"`, ` caller=logging/logging_test.go:`} {
		if !strings.Contains(line, want) {
			t.Errorf("missing %s in %s", want, line)
		}
	}
	if strings.Count(line, "\n") != 1 || !strings.HasSuffix(line, "\n") {
		t.Errorf("not one line: %q", line)
	}

	buf.Reset()
	log, _ = New(&buf, "warn", "json")
	log.Info("hidden")
	Slog(log).Info("hidden too")
	Slog(log).Warn("from slog", "address", "127.0.0.1:1", "http2", false)
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatalf("%v: %s", err, buf.String())
	}
	if m["msg"] != "from slog" || m["address"] != "127.0.0.1:1" || m["level"] != "warn" || m["http2"] != false || m["ts"] == nil {
		t.Errorf("json: %v", m)
	}
}

// Every level and format that flags may offer is one New takes.
func TestLevelsAndFormats(t *testing.T) {
	for _, l := range Levels {
		for _, f := range Formats {
			if _, err := New(&bytes.Buffer{}, l, f); err != nil {
				t.Errorf("%s %s: %v", l, f, err)
			}
		}
	}
	if _, err := New(&bytes.Buffer{}, "trace", "logfmt"); err == nil {
		t.Error("level trace: no error")
	}
}
