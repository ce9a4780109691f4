package realserver

import (
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// portSlot is how many ports one reservation lock covers: every block
// starts on a slot boundary, so two blocks that could overlap share a lock.
const portSlot = 32

// portBlock is a run of consecutive TCP ports on 127.0.0.1 held for one
// server until release. Checking that a port is free is not enough: a
// cluster test stops its servers for an outage and a test beside it (in
// this process or another package's) found the freed ports and started its
// own servers there. The hold is an abstract unix socket per slot, which the
// kernel gives to one process at a time and frees when it dies.
type portBlock struct {
	Base  int
	locks []net.Listener
}

// reservePorts finds and holds n consecutive free TCP ports on 127.0.0.1
// below the kernel's ephemeral range (where freshly dialled and port-0
// listeners land).
func reservePorts(n int) (*portBlock, error) {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				low = v
			}
		}
	}
	slots := (n + portSlot - 1) / portSlot
	lo, hi := 10000/portSlot, (low-n)/portSlot // first slot in [lo, hi)
	if hi-lo < 30 {
		lo, hi = 1024/portSlot, (65535-n)/portSlot
	}
	for try := 0; try < 200; try++ {
		first := lo + mrand.IntN(hi-lo)
		b := &portBlock{Base: first * portSlot}
		if b.hold(first, slots) && portsFree(b.Base, n) {
			return b, nil
		}
		b.release()
	}
	return nil, fmt.Errorf("no %d consecutive free ports on 127.0.0.1", n)
}

// hold takes the locks of slots first..first+count-1; false if another
// block (of any process) holds one of them.
func (b *portBlock) hold(first, count int) bool {
	for s := first; s < first+count; s++ {
		ln, err := net.Listen("unix", "@relay-test-ports/"+strconv.Itoa(s))
		if err != nil {
			return false
		}
		b.locks = append(b.locks, ln)
	}
	return true
}

// release lets other blocks have the ports. Nil-safe and idempotent.
func (b *portBlock) release() {
	if b == nil {
		return
	}
	for _, ln := range b.locks {
		ln.Close()
	}
	b.locks = nil
}

// portsFree reports whether ports base..base+n-1 can be bound now.
func portsFree(base, n int) bool {
	for p := base; p < base+n; p++ {
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			return false
		}
		ln.Close()
	}
	return true
}

// ReservePorts holds n consecutive free ports on 127.0.0.1 for a server the
// caller starts itself (a relay under test), until release: one that is
// stopped and started again on the same port keeps it meanwhile.
func ReservePorts(n int) (base int, release func(), err error) {
	b, err := reservePorts(n)
	if err != nil {
		return 0, nil, err
	}
	return b.Base, b.release, nil
}
