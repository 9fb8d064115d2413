package cliflag

import (
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alecthomas/kingpin/v2"
)

func TestBytes(t *testing.T) {
	for in, want := range map[string]int{"0": 0, "4096": 4096, "4KiB": 4096, "4KB": 4096, "8MiB": 8 << 20, "1GiB": 1 << 30, "1TiB": 1 << 40} {
		var n int
		if err := Bytes(&n).Set(in); err != nil || n != want {
			t.Errorf("%q: %d, %v; want %d", in, n, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "2TiB", "4PiB", "12 apples", "lots"} {
		var n int
		if err := Bytes(&n).Set(in); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
	n := 4 << 20
	if s := Bytes(&n).String(); s != "4MiB" {
		t.Errorf("String: %s", s)
	}
}

func TestList(t *testing.T) {
	var l []string
	for in, want := range map[string][]string{"a, b,a,,c ": {"a", "b", "c"}, "": nil, " , ": nil} {
		if err := List(&l).Set(in); err != nil || !slices.Equal(l, want) {
			t.Errorf("%q: %q, %v", in, l, err)
		}
	}
	l = []string{"x", "y"}
	if s := List(&l).String(); s != "x,y" {
		t.Errorf("String: %s", s)
	}
}

// Parse: --flag=false of a boolean flag, errors that name the flag, and
// lists and sizes with their defaults.
func TestParse(t *testing.T) {
	newApp := func() (*kingpin.Application, *bool, *time.Duration, *[]string, *int) {
		app := kingpin.New("t", "").UsageWriter(io.Discard).ErrorWriter(io.Discard).Terminate(nil)
		var b bool
		var d time.Duration
		var l []string
		var n int
		app.Flag("on", "").Default("true").BoolVar(&b)
		app.Flag("every", "").Default("1s").DurationVar(&d)
		app.Flag("list", "").Default("a,b").SetValue(List(&l))
		app.Flag("size", "").Default("1KiB").SetValue(Bytes(&n))
		return app, &b, &d, &l, &n
	}
	app, b, d, l, n := newApp()
	if _, err := Parse(app, nil); err != nil || !*b || *d != time.Second || !slices.Equal(*l, []string{"a", "b"}) || *n != 1024 {
		t.Errorf("defaults: %v %v %v %v %v", *b, *d, *l, *n, err)
	}
	app, b, _, l, n = newApp()
	if _, err := Parse(app, []string{"--on=false", "--list=c", "--size=2"}); err != nil || *b || !slices.Equal(*l, []string{"c"}) || *n != 2 {
		t.Errorf("values: %v %v %v %v", *b, *l, *n, err)
	}
	app, b, _, _, _ = newApp()
	if _, err := Parse(app, []string{"--no-on"}); err != nil || *b {
		t.Errorf("--no-on: %v %v", *b, err)
	}
	app, _, _, _, _ = newApp()
	if _, err := Parse(app, []string{"--every=soon"}); err == nil || !strings.Contains(err.Error(), `invalid value "soon" for flag --every: time: invalid duration`) {
		t.Errorf("bad duration: %v", err)
	}
	app, _, _, _, _ = newApp()
	if _, err := Parse(app, []string{"--on=maybe"}); err == nil {
		t.Error("--on=maybe: no error")
	}
}

// FuzzValues: any flag value is a byte size within bounds that survives a
// round trip through String, or an error; any list has no empty, padded or
// repeated item. Never a panic.
func FuzzValues(f *testing.F) {
	for _, s := range []string{"0", "4096", "4KiB", "8MiB", "1TiB", "2TiB", "-1", "1.5GB", "9223372036854775807KiB", "", " ", ",", "a,,b", " a , a ,b", "a\x00b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var n int
		b := Bytes(&n)
		if err := b.Set(s); err == nil {
			if n < 0 || n > 1<<40 {
				t.Fatalf("%q: %d accepted", s, n)
			}
			var again int
			if err := Bytes(&again).Set(b.String()); err != nil || again != n {
				t.Fatalf("%q: %d, String %q gives %d, %v", s, n, b.String(), again, err)
			}
		}
		var l []string
		if err := List(&l).Set(s); err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		for i, item := range l {
			if item == "" || item != strings.TrimSpace(item) || strings.Contains(item, ",") || slices.Contains(l[:i], item) {
				t.Fatalf("%q: list %q", s, l)
			}
		}
	})
}
