package main

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/internal/leakcheck"
)

// daemonEnv makes the test binary run main instead of the tests: the VM
// tests start the daemon's real code path (ctagent run) from the test
// binary itself, under another user and capability set (see
// TestVMLeastPrivilege).
const daemonEnv = "CTAGENT_TEST_RUN_MAIN"

// TestMain fails the run when a test leaves a goroutine running or a file
// descriptor open; with daemonEnv=1 it is ctagent.
// initialMemlock is RLIMIT_MEMLOCK as the test process started with it.
var initialMemlock unix.Rlimit

func TestMain(m *testing.M) {
	if os.Getenv(daemonEnv) == "1" {
		main()
		return
	}
	// Before any in-process daemon lifts it (see runCapCase).
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &initialMemlock); err != nil {
		panic(err)
	}
	// The daemons run in this process keep the capabilities that the
	// tests after them need.
	dropCapsAfterAttach = false
	leakcheck.Main(m)
}
