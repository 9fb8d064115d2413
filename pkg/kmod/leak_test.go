package kmod

import (
	"testing"

	"github.com/ctagent/ctagent/internal/leakcheck"
)

// TestMain fails the run when a test leaves a goroutine running or a file
// descriptor open.
func TestMain(m *testing.M) { leakcheck.Main(m) }
