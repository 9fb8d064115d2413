package tracer

import "errors"

func openBPF(opts Options, b Backend) (Tracer, error) {
	return nil, errors.New("eBPF backend: not implemented yet")
}
