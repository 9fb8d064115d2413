package tracer

import (
	"cmp"
	"maps"
	"slices"

	"go.uber.org/zap"
)

// autoOrder is the order in which BackendAuto tries the backends.
var autoOrder = []Backend{BackendFentry, BackendKprobe, BackendNetlink}

// RefusedBackends lists the backends of Refused in the order BackendAuto
// tries them, then any other by name.
func (i Info) RefusedBackends() []Backend {
	rank := func(b Backend) int { return cmp.Or(slices.Index(autoOrder, b)+1, len(autoOrder)+1) }
	return slices.SortedFunc(maps.Keys(i.Refused), func(a, b Backend) int {
		return cmp.Or(cmp.Compare(rank(a), rank(b)), cmp.Compare(a, b))
	})
}

// Log logs, in one line, which backend runs (requested: what was asked
// for), what it attached and why the backends before it were refused.
func (i Info) Log(log *zap.Logger, requested Backend) {
	fields := []zap.Field{
		zap.String("backend", string(i.Backend)),
		zap.String("requested", string(requested)),
		zap.Strings("hooks", i.Hooks),
		zap.String("kernel", i.Kernel),
	}
	if i.Backend != BackendNetlink {
		fields = append(fields, zap.Bool("ring_buffer", i.RingBuffer))
	}
	for _, b := range i.RefusedBackends() {
		fields = append(fields, zap.String("refused_"+string(b), i.Refused[b]))
	}
	msg := "Tracer attached"
	if len(i.Refused) > 0 {
		msg = "Tracer attached on a fallback backend"
	}
	log.WithOptions(zap.AddCallerSkip(1)).Info(msg, fields...)
}
