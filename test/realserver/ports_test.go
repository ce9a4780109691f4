package realserver

import (
	"net"
	"strconv"
	"testing"
)

// TestReservedPortsAreNotHandedOutTwice: a block stays reserved while its
// servers are stopped (nothing listens on it), so a test beside it cannot
// start its own servers there; it is free again after release.
func TestReservedPortsAreNotHandedOutTwice(t *testing.T) {
	var blocks []*portBlock
	defer func() {
		for _, b := range blocks {
			b.release()
		}
	}()
	seen := map[int]bool{}
	for range 40 {
		b, err := reservePorts(12)
		if err != nil {
			t.Fatal(err)
		}
		blocks = append(blocks, b)
		if b.Base%portSlot != 0 {
			t.Fatalf("block at %d is not on a slot boundary", b.Base)
		}
		if seen[b.Base] {
			t.Fatalf("block at %d handed out twice while held", b.Base)
		}
		seen[b.Base] = true
		// Its ports are free (nothing listens), yet the block is held.
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(b.Base)))
		if err != nil {
			t.Fatal(err)
		}
		ln.Close()
		if again := (&portBlock{}); again.hold(b.Base/portSlot, 1) {
			again.release()
			t.Fatalf("slot of block %d taken again while held", b.Base)
		}
	}
	first := blocks[0]
	first.release()
	again := &portBlock{}
	if !again.hold(first.Base/portSlot, 1) {
		t.Fatalf("slot of block %d still held after release", first.Base)
	}
	again.release()

	// A block wider than a slot holds every slot it covers.
	wide, err := reservePorts(portSlot + 1)
	if err != nil {
		t.Fatal(err)
	}
	defer wide.release()
	if len(wide.locks) != 2 {
		t.Fatalf("a %d-port block holds %d slots, want 2", portSlot+1, len(wide.locks))
	}
}
