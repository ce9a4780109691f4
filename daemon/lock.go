package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// lockName is the file in data_dir a running relay holds locked.
const lockName = "relay.lock"

// dataLock is a relay's exclusive hold on its data_dir: the embedded
// JetStream store and the spool there are one relay's. Two embedded NATS
// servers on one store corrupt it; two relays on one spool take each
// other's files.
type dataLock struct {
	f *os.File
}

// errLocked is lockFile's answer when another process holds the lock.
var errLocked = errors.New("locked")

// lockDataDir takes dir's lock without waiting (creating dir if need be)
// and writes this process's pid into the lock file, for the message of the
// relay refused next. The system releases the lock when the process ends,
// however it ends.
func lockDataDir(dir string) (*dataLock, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("data_dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("data_dir %s: %w", dir, err)
	}
	if err := lockFile(f); err != nil {
		f.Close()
		if errors.Is(err, errLocked) {
			return nil, fmt.Errorf("data_dir %s is in use by another relay (pid %s); one data_dir is one relay's", dir, holder(path))
		}
		return nil, fmt.Errorf("data_dir %s: lock %s: %w", dir, path, err)
	}
	err = f.Truncate(0)
	if err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("data_dir %s: write %s: %w", dir, path, err)
	}
	return &dataLock{f: f}, nil
}

// holder is the pid written in the lock file at path, "unknown" if none.
func holder(path string) string {
	b, err := os.ReadFile(path)
	if pid := string(bytes.TrimSpace(b)); err == nil && pid != "" {
		return pid
	}
	return "unknown"
}

// release gives the lock up; the file stays (removing it would let a
// relay lock a new file while another still holds the old one).
func (l *dataLock) release() error {
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("data_dir lock: %w", err)
	}
	return nil
}
