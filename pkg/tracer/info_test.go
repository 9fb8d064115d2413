package tracer

import (
	"slices"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestRefusedBackends(t *testing.T) {
	i := Info{Refused: map[Backend]string{"zeta": "z", BackendKprobe: "k", "alpha": "a", BackendFentry: "f"}}
	want := []Backend{BackendFentry, BackendKprobe, "alpha", "zeta"}
	if got := i.RefusedBackends(); !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := (Info{}).RefusedBackends(); len(got) != 0 {
		t.Errorf("none refused: %v", got)
	}
}

func TestInfoLog(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	log := zap.New(core)
	Info{Backend: BackendNetlink, Kernel: "6.1", Refused: map[Backend]string{BackendKprobe: "no", BackendFentry: "no btf"}}.Log(log, BackendAuto)
	Info{Backend: BackendFentry, Hooks: []string{"fexit/x"}, RingBuffer: true}.Log(log, BackendFentry)
	all := logs.All()
	if len(all) != 2 {
		t.Fatalf("%d entries", len(all))
	}
	fb, ok := all[0].ContextMap(), all[1].ContextMap()
	if all[0].Message != "Tracer attached on a fallback backend" || fb["refused_fentry"] != "no btf" || fb["requested"] != "auto" {
		t.Errorf("fallback: %s %v", all[0].Message, fb)
	}
	if _, has := fb["ring_buffer"]; has {
		t.Errorf("netlink with ring_buffer: %v", fb)
	}
	if all[1].Message != "Tracer attached" || ok["ring_buffer"] != true || ok["backend"] != "fentry" {
		t.Errorf("first choice: %s %v", all[1].Message, ok)
	}
}
