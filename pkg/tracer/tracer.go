package tracer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
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
	refused, reasons := map[Backend]string{}, map[Backend]string{}
	var errs []error
	for _, b := range order {
		var (
			t   Tracer
			err error
		)
		if b == BackendNetlink {
			t, err = openNetlink(ctx, opts)
		} else {
			t, err = openBPF(ctx, opts, b)
		}
		if err == nil {
			setRefused(t, refused, reasons)
			return t, nil
		}
		refused[b], reasons[b] = err.Error(), refusalReason(err)
		errs = append(errs, fmt.Errorf("%s: %w", b, err))
		opts.Logger.Info("tracer backend refused", zap.String("backend", string(b)), zap.Error(err))
	}
	return nil, fmt.Errorf("no tracer backend could start: %w", errors.Join(errs...))
}

// refusalReason classifies why a backend could not start.
func refusalReason(err error) string {
	var verr *ebpf.VerifierError
	switch {
	case errors.Is(err, ErrNoBTF):
		return "no_btf"
	case errors.Is(err, ErrSelfTest):
		return "self_test_failed"
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return "permission_denied"
	case errors.As(err, &verr):
		return "verifier_rejected"
	case errors.Is(err, ebpf.ErrNotSupported):
		return "not_supported"
	case strings.Contains(err.Error(), "tracefs"):
		// No perf kprobe PMU and no tracefs to fall back to: kernels
		// without CONFIG_KPROBES, or tracefs not mounted.
		return "unavailable"
	case errors.Is(err, os.ErrNotExist):
		return "symbol_not_found"
	}
	return "error"
}

// setRefused records the backends tried before t in its Info.
func setRefused(t Tracer, refused, reasons map[Backend]string) {
	if r, ok := t.(interface {
		setRefused(refused, reasons map[Backend]string)
	}); ok {
		r.setRefused(refused, reasons)
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
