package exchange

import (
	"bytes"
	"runtime"
	"testing"
)

// baseZeroDirZip is n records under an end record that says 1 entry and
// a directory size of one record (46 bytes) at an offset that points to
// the first record: the offsets give a base offset > 0, but a record reads
// at the directory offset itself, so archive/zip takes base 0 and reads all
// n records from there, while a count from end-dirSize sees the last one.
func baseZeroDirZip(n int) []byte { return recordsZip(n, 1, 46) }

// TestZipDirectoryBaseZeroCounted: an end record whose offsets name a
// wrong base while a directory record sits at the offset it names: archive/zip
// reads from there, and the count read from elsewhere saw one record of
// 65,537, all parsed then (found by review). The count follows archive/zip.
func TestZipDirectoryBaseZeroCounted(t *testing.T) {
	b := baseZeroDirZip(65537)
	if _, err := zipDirCheck(bytes.NewReader(b), int64(len(b)), Limits{}.norm()); err == nil {
		t.Errorf("zipDirCheck passed a directory archive/zip reads as 65537 records")
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := ReadFileHeader(bytes.NewReader(b), int64(len(b)), Limits{}, "")
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d-byte zip: %v; allocated %d KiB", len(b), err, alloc>>10)
	wantErr(t, "ReadFileHeader", err, ErrBadZip)
	if alloc > 4<<20 {
		t.Errorf("allocated %d MiB for a %d MiB zip whose end record says 1 entry (65537 records parsed)", alloc>>20, len(b)>>20)
	}
}
