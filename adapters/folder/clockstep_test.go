package folder

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/relay1c/relay/adapters/folder/foldertest"
)

// TestSettleSurvivesClockStepBack: a file first seen within its settle time
// (counted from its mtime, a wall-clock time) is taken once it settles even
// when the wall clock is stepped back an hour meanwhile (NTP step, VM
// resume): the settle time runs on the monotonic clock (it waited the hour).
func TestSettleSurvivesClockStepBack(t *testing.T) {
	m := coarseSource(t, 1)
	m.mtime = time.Now().Round(0) // just written; a file's mtime has no monotonic reading
	o := fastOptions()
	o.Settle = 300 * time.Millisecond
	o.TrustMTime = true
	p, err := NewPickup(m, o)
	if err != nil {
		t.Fatal(err)
	}
	var step atomic.Int64
	p.now = func() time.Time { return wallShifted(time.Duration(step.Load())) }
	ch, err := p.Subscribe(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	time.Sleep(100 * time.Millisecond) // the first scan saw it, not settled yet
	step.Store(int64(-time.Hour))      // the wall clock steps back
	msg := foldertest.Next(ch, 3*time.Second)
	if msg == nil {
		t.Fatal("a settled, unchanged file is not taken after the wall clock stepped back 1h (it waits for the hour)")
	}
	msg.Ack()
}

// wallShifted is time.Now with its wall clock moved by d and its
// monotonic reading untouched: what time.Now returns after the system clock
// was stepped by d. The time package has no way to make such a Time, so it
// sets the monotonic reading by hand: it relies on time.Time being
// {wall uint64; ext int64; loc *Location} with ext the monotonic reading
// when wall has its hasMonotonic bit (as Add keeps it here); the only unsafe
// code of relay, in this test file only, and TestWallShiftedHelper fails if
// a Go release changes that layout.
func wallShifted(d time.Duration) time.Time {
	real := time.Now()
	if d == 0 {
		return real
	}
	s := real.Add(d) // moves wall and monotonic alike
	// time.Time is {wall uint64; ext int64; loc}; ext is the monotonic reading.
	(*[2]int64)(unsafe.Pointer(&s))[1] = (*[2]int64)(unsafe.Pointer(&real))[1]
	return s
}

// TestWallShiftedHelper: wallShifted does what a clock step does: the wall
// clock moves, the monotonic reading does not.
func TestWallShiftedHelper(t *testing.T) {
	a := time.Now()
	b := wallShifted(-time.Hour)
	if b.Before(a) || b.Sub(a) > time.Second {
		t.Fatalf("monotonic reading moved: %s", b.Sub(a))
	}
	if d := a.Round(0).Sub(b.Round(0)); d < 59*time.Minute {
		t.Fatalf("wall clock moved %s", d)
	}
}
