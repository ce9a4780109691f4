package realserver

import (
	"os"
	"testing"
)

// DebianNATSClusterT starts three of Debian's nats-server on 127.0.0.1 (one
// JetStream domain, "hq") for t and stops them when t ends. Without the
// package t is skipped, or fails under RELAY_E2E_REQUIRE_SERVERS=1 (what
// scripts/test.sh sets once it has installed it).
func DebianNATSClusterT(t testing.TB) *NATSCluster {
	t.Helper()
	bin, err := DebianNATSServer()
	if err != nil {
		if os.Getenv("RELAY_E2E_REQUIRE_SERVERS") != "1" {
			t.Skipf("%v (scripts/test.sh does)", err)
		}
		t.Fatalf("%v (RELAY_E2E_REQUIRE_SERVERS=1)", err)
	}
	c, err := StartNATSCluster(bin, t.TempDir(), 3, "hq", false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}
