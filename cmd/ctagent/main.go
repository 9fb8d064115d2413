// Command ctagent exports the Linux conntrack table per network namespace to
// Prometheus. See deploy/README.md for the capabilities and mounts it needs.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"github.com/ctagent/ctagent/pkg/logging"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1 // a runtime error, or check found no usable backend
	exitUsage   = 2 // bad flags or values
)

// loggedError was already logged; main only sets the exit status.
type loggedError struct{ err error }

func (e *loggedError) Error() string { return e.err.Error() }
func (e *loggedError) Unwrap() error { return e.err }

// exitCode maps the error of run to an exit status, and reports errors that
// nobody logged yet in one line.
func exitCode(err error, stderr io.Writer) int {
	var (
		usage  *usageError
		logged *loggedError
	)
	switch {
	case err == nil, errors.Is(err, errShown):
		return exitOK
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "ctagent: %v\nRun 'ctagent --help' for usage.\n", err)
		return exitUsage
	case errors.As(err, &logged):
		return exitFailure
	}
	fmt.Fprintf(stderr, "ctagent: %v\n", err)
	return exitFailure
}

// run parses args and runs the command until ctx is done.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseArgs(args, stdout)
	if err != nil {
		return err
	}
	switch cfg.command {
	case "version":
		_, err := fmt.Fprintln(stdout, versionString())
		return err
	case "list": // clients of the daemon: no logger, errors in one line
		return runList(ctx, cfg, stdout)
	case "top":
		return runTop(ctx, cfg, stdout)
	}
	log, err := logging.New(stderr, cfg.logLevel, cfg.logFormat)
	if err != nil {
		return &usageError{err} // validated by parseArgs; unreachable
	}
	defer log.Sync() //nolint:errcheck // stderr cannot be synced on some systems

	switch cfg.command {
	case "check":
		err = runCheck(ctx, cfg, stdout, log)
	case "uninstall":
		err = runUninstall(cfg, stdout)
	case "events":
		err = runEvents(ctx, cfg, stdout, log)
	default:
		err = runDaemon(ctx, cfg, log)
	}
	var usage *usageError
	if err != nil && !errors.As(err, &usage) && !errors.Is(err, errCheckFailed) {
		log.Error("ctagent failed", zap.Error(err))
		return &loggedError{err}
	}
	return err
}
