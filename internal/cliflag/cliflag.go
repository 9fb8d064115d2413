// Package cliflag adapts kingpin to the flags ctagent has always taken:
// sizes as plain bytes or with units, comma-separated lists, and
// --flag=false for boolean flags; and makes a bad value's error name its
// flag. The flags themselves are defined in cmd/ctagent.
package cliflag

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/alecthomas/kingpin/v2"
	"github.com/alecthomas/units"
)

// Parse parses args (without the program name) as kingpin's app.Parse
// does, and returns the command. A bad flag value's error names the flag
// (kingpin returns the value's own error, "time: invalid duration ...",
// which names none), and --flag=true and --flag=false of a boolean flag
// are taken as kingpin's --flag and --no-flag.
func Parse(app *kingpin.Application, args []string) (string, error) {
	for _, f := range app.Model().Flags {
		app.GetFlag(f.Name).SetValue(namedValue{f.Value, f.Name})
	}
	return app.Parse(boolValues(app, args))
}

// namedValue prefixes the errors of a flag value with the flag's name. It
// keeps the bool and repeatable kinds that kingpin asks its values for.
type namedValue struct {
	kingpin.Value
	name string
}

func (v namedValue) Set(s string) error {
	if err := v.Value.Set(s); err != nil {
		return fmt.Errorf("invalid value %q for flag --%s: %w", s, v.name, err)
	}
	return nil
}

func (v namedValue) IsBoolFlag() bool {
	b, ok := v.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

func (v namedValue) IsCumulative() bool {
	c, ok := v.Value.(interface{ IsCumulative() bool })
	return ok && c.IsCumulative()
}

// boolValues turns --flag=true and --flag=false of a boolean flag into
// kingpin's --flag and --no-flag: kingpin's boolean flags take no value, and
// ctagent's docs and deployments use --tracer.bpf-stats=false.
func boolValues(app *kingpin.Application, args []string) []string {
	out := slices.Clone(args)
	for i, a := range out {
		name, val, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		f := app.GetFlag(name)
		b, err := strconv.ParseBool(val)
		if !ok || !strings.HasPrefix(a, "--") || f == nil || !f.Model().IsBoolFlag() || err != nil {
			continue
		}
		out[i] = "--" + map[bool]string{true: "", false: "no-"}[b] + name
	}
	return out
}

// Bytes is a flag value that sets *n in bytes, between 0 and 1TiB. It
// parses what kingpin's Bytes() does (units.Base2Bytes: 4KiB, 8MiB, 1GB)
// and a plain number of bytes, which units refuses and ctagent's flags
// have always taken.
func Bytes(n *int) kingpin.Value { return byteSize{n} }

type byteSize struct{ n *int }

func (b byteSize) String() string { return units.Base2Bytes(*b.n).String() }

func (b byteSize) Set(s string) error {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		n64, perr := units.ParseBase2Bytes(s)
		n, err = int64(n64), perr
	}
	if err == nil && (n < 0 || n > 1<<40) {
		err = fmt.Errorf("%s is not between 0 and 1TiB", s)
	}
	*b.n = int(n)
	return err
}

// List is a flag value that sets *l to a comma-separated list, without
// empty or repeated items. These flags stay comma-separated rather than
// repeatable (kingpin's Strings), as they always were.
func List(l *[]string) kingpin.Value { return list{l} }

type list struct{ l *[]string }

func (l list) String() string { return strings.Join(*l.l, ",") }

func (l list) Set(s string) error {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" && !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	*l.l = out
	return nil
}
