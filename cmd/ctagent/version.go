package main

import (
	"fmt"
	"io"
	"runtime"
)

// Set at build time:
//
//	go build -ldflags "-X main.Version=v0.1.0 -X main.Revision=$(git rev-parse --short HEAD)" ./cmd/ctagent
var (
	Version  = "dev"
	Revision = "unknown"
)

func printVersion(w io.Writer) {
	fmt.Fprintf(w, "ctagent, version %s (revision: %s)\n  go version: %s\n  platform:   %s/%s\n",
		Version, Revision, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
