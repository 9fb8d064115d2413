package tracer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// ErrNoBTF means no kernel BTF was found: the eBPF backends cannot run.
var ErrNoBTF = errors.New("no kernel BTF")

// An Opener starts one backend. Backend packages register theirs with
// Register; opts has its defaults filled in and opts.Backend is the one
// asked for.
type Opener func(ctx context.Context, opts Options) (Tracer, error)

var (
	registryMu sync.Mutex
	registry   = map[Backend]Opener{}
)

// Register makes a backend available to Open. The backend packages call it
// from init (pkg/tracer/ebpftracer: fentry and kprobe;
// pkg/tracer/netlinktracer: netlink), so that a program picks its backends
// by importing them, and this package needs neither cilium/ebpf nor netlink.
func Register(b Backend, open Opener) {
	registryMu.Lock()
	defer registryMu.Unlock()
	registry[b] = open
}

func opener(b Backend) Opener {
	registryMu.Lock()
	defer registryMu.Unlock()
	return registry[b]
}

// errNotRegistered means the program was built without a backend's package.
var errNotRegistered = errors.New("backend not built in (its package is not imported)")

// Open starts a tracer. BackendAuto tries fentry, kprobe, then netlink, and
// records why each refused in Info.Refused.
func Open(ctx context.Context, opts Options) (Tracer, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Backend == "" {
		opts.Backend = BackendAuto
	}
	if _, err := ParseBackend(string(opts.Backend)); err != nil {
		return nil, err
	}
	order := []Backend{opts.Backend}
	if opts.Backend == BackendAuto {
		order = autoOrder
	}
	refused, reasons := map[Backend]string{}, map[Backend]string{}
	var errs []error
	for _, b := range order {
		err := errNotRegistered
		if open := opener(b); open != nil {
			o := opts
			o.Backend = b
			var t Tracer
			if t, err = open(ctx, o); err == nil {
				if len(refused) == 0 {
					return t, nil
				}
				return &chosen{Tracer: t, refused: refused, reasons: reasons}, nil
			}
		}
		refused[b], reasons[b] = err.Error(), refusalReason(err)
		errs = append(errs, fmt.Errorf("%s: %w", b, err))
		opts.Logger.Info("tracer backend refused", zap.String("backend", string(b)), zap.Error(err))
	}
	return nil, fmt.Errorf("no tracer backend could start: %w", errors.Join(errs...))
}

// chosen is the backend Open chose after others refused: its Info lists them.
type chosen struct {
	Tracer
	refused, reasons map[Backend]string
}

func (c *chosen) Info() Info {
	i := c.Tracer.Info()
	i.Refused, i.RefusedReason = c.refused, c.reasons
	return i
}

// RefusedError is an error of a backend that says in one stable word why
// it cannot run here (see Info.RefusedReason).
type RefusedError struct {
	Reason string
	Err    error
}

func (e *RefusedError) Error() string { return e.Err.Error() }

// Unwrap returns the backend's error.
func (e *RefusedError) Unwrap() error { return e.Err }

// refusalReason classifies why a backend could not start: the backend's
// own word where it gave one (RefusedError), else from the error.
func refusalReason(err error) string {
	var re *RefusedError
	switch {
	case errors.As(err, &re):
		return re.Reason
	case errors.Is(err, errNotRegistered):
		return "not_built_in"
	case errors.Is(err, ErrNoBTF):
		return "no_btf"
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return "permission_denied"
	case errors.Is(err, os.ErrNotExist):
		return "symbol_not_found"
	}
	return "error"
}

// KernelRelease returns uname -r.
func KernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}
