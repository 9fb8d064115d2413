package main

// The tracer backends this program can run, registered with pkg/tracer by
// importing them: the eBPF one (fentry, kprobe) and the netlink fallback.
import (
	_ "github.com/ctagent/ctagent/pkg/tracer/ebpftracer"
	_ "github.com/ctagent/ctagent/pkg/tracer/netlinktracer"
)
