package exchange

import (
	"bytes"
	"encoding/binary"
	"runtime"
	"testing"
)

// baseZeroDirZip is moduloDirZip's 65537 records, with an end record that
// says 1 entry and a directory size of one record (46 bytes) at an offset
// that points to the first record: the offsets give a base offset > 0,
// but a record reads at the directory offset itself, so archive/zip takes
// base 0 and reads all 65537 records from there, while zipDirCheck counts
// from end-dirSize (the last record: 1).
func baseZeroDirZip(n int) []byte {
	le := binary.LittleEndian
	var b bytes.Buffer
	b.WriteString("PK\x03\x04")
	b.Write(make([]byte, 60))
	dirOff := b.Len()
	rec := make([]byte, 46)
	le.PutUint32(rec, 0x02014b50)
	le.PutUint16(rec[4:], 20)
	le.PutUint16(rec[6:], 20)
	for i := 0; i < n; i++ {
		b.Write(rec)
	}
	eocd := make([]byte, 22)
	le.PutUint32(eocd, 0x06054b50)
	le.PutUint16(eocd[8:], 1)
	le.PutUint16(eocd[10:], 1)
	le.PutUint32(eocd[12:], 46)
	le.PutUint32(eocd[16:], uint32(dirOff))
	b.Write(eocd)
	return b.Bytes()
}

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
