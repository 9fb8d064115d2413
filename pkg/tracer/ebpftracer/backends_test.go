package ebpftracer

// The fallback tests (BackendAuto, the self-test's netlink comparison) need
// the netlink backend registered too.
import _ "github.com/ctagent/ctagent/pkg/tracer/netlinktracer"
