package tracer

import (
	"slices"
	"testing"
)

func TestStateAndStatusNames(t *testing.T) {
	if got := TCPStateName(3); got != "ESTABLISHED" {
		t.Errorf("TCPStateName(3) = %q", got)
	}
	if got := TCPStateName(42); got != "42" {
		t.Errorf("TCPStateName(42) = %q", got)
	}
	if got := StatusNames(1<<1 | 1<<3 | 1<<20); !slices.Equal(got, []string{"SEEN_REPLY", "CONFIRMED", "0x100000"}) {
		t.Errorf("StatusNames: %v", got)
	}
	if got := StatusNames(0); got != nil {
		t.Errorf("StatusNames(0) = %v", got)
	}
}
