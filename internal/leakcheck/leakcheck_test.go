package leakcheck

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestMain(m *testing.M) { Main(m) }

// A file opened after a snapshot is reported with its path, and no longer
// once it is closed; the descriptor that reads /proc/self/fd is not.
func TestNewFDs(t *testing.T) {
	before, err := OpenFDs()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "leaky")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	after, err := OpenFDs()
	if err != nil {
		t.Fatal(err)
	}
	want := strconv.Itoa(int(f.Fd())) + " -> " + path
	if got := NewFDs(before, after); !slices.Equal(got, []string{want}) {
		t.Errorf("new descriptors %q, want [%q]", got, want)
	}
	f.Close()
	after, err = OpenFDs()
	if err != nil {
		t.Fatal(err)
	}
	if got := NewFDs(before, after); len(got) != 0 {
		t.Errorf("after close: %q", got)
	}
	for fd, target := range after {
		if strings.HasSuffix(target, "/fd") && strings.HasPrefix(target, "/proc/") {
			t.Errorf("the reading descriptor %d -> %s is listed", fd, target)
		}
	}
	// A descriptor number reused for something else counts as new.
	if got := NewFDs(map[int]string{3: "socket:[1]"}, map[int]string{3: "socket:[2]"}); !slices.Equal(got, []string{"3 -> socket:[2]"}) {
		t.Errorf("reused descriptor: %q", got)
	}
}
