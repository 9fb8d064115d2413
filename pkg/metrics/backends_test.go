package metrics

// The tests that run the exporter on a real tracer need its backends.
import (
	_ "github.com/ctagent/ctagent/pkg/tracer/ebpftracer"
	_ "github.com/ctagent/ctagent/pkg/tracer/netlinktracer"
)
