package realserver

import (
	"os"
	"os/exec"
	"runtime"
	"time"
)

// startDaemon starts cmd, whose output goes to out (closed when the process
// ends), and returns a channel closed once it has exited and been reaped.
//
// cmd.SysProcAttr.Pdeathsig, which the servers here set so that they get
// SIGTERM if the test process dies without stopping them, follows the
// thread that forked, not the process: the goroutine that starts the
// process stays locked to its thread and blocked in Wait for the server's
// whole life.
func StartDaemon(cmd *exec.Cmd, out *os.File) (<-chan struct{}, error) {
	started := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer out.Close()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
		close(done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return done, nil
}

// closed reports whether done is closed: the daemon has exited and been
// reaped.
func closed(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// waitUntil asks ok every step until it says true (true) or d has passed
// (false).
func waitUntil(d, step time.Duration, ok func() bool) bool {
	for deadline := time.Now().Add(d); !ok(); time.Sleep(step) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}
