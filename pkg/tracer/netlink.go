package tracer

import (
	"context"
	"errors"
)

func openNetlink(ctx context.Context, opts Options) (Tracer, error) {
	return nil, errors.New("netlink backend: not implemented yet")
}
