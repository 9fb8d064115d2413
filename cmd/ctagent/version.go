package main

import (
	"fmt"
	"runtime"
)

// Set at build time:
//
//	go build -ldflags "-X main.Version=v0.1.0 -X main.Revision=$(git rev-parse --short HEAD)" ./cmd/ctagent
var (
	Version  = "dev"
	Revision = "unknown"
)

// versionString is what version and --version print.
func versionString() string {
	return fmt.Sprintf("ctagent, version %s (revision: %s)\n  go version: %s\n  platform:   %s/%s",
		Version, Revision, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
