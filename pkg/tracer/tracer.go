package tracer

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// ErrNoBTF means no kernel BTF was found: the eBPF backends cannot run.
var ErrNoBTF = errors.New("no kernel BTF")

func open(ctx context.Context, opts Options) (Tracer, error) {
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
		order = []Backend{BackendFentry, BackendKprobe, BackendNetlink}
	}
	refused := map[Backend]string{}
	var errs []error
	for _, b := range order {
		var (
			t   Tracer
			err error
		)
		if b == BackendNetlink {
			t, err = openNetlink(ctx, opts)
		} else {
			t, err = openBPF(opts, b)
		}
		if err == nil {
			setRefused(t, refused)
			return t, nil
		}
		refused[b] = err.Error()
		errs = append(errs, fmt.Errorf("%s: %w", b, err))
		opts.Logger.Info("tracer backend refused", zap.String("backend", string(b)), zap.Error(err))
	}
	return nil, fmt.Errorf("no tracer backend could start: %w", errors.Join(errs...))
}

// setRefused records the backends tried before t in its Info.
func setRefused(t Tracer, refused map[Backend]string) {
	if r, ok := t.(interface{ setRefused(map[Backend]string) }); ok {
		r.setRefused(refused)
	}
}

// kernelRelease returns uname -r.
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}
