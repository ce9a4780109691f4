package exchange

import (
	"encoding/binary"
	"errors"
	"runtime"
	"testing"
)

var errReadBudget = errors.New("test: central directory read past the budget")

// cdBomb is a synthetic zip of size bytes (a little over 4 GiB; nothing is
// stored): a local header signature at 0, from 64 on the same 47-byte
// central directory record over and over, and at the end a zip64 locator
// and record that describe a one-entry, 47-byte directory, and an end
// record whose 32-bit directory size is 0xFFFFFFFF. zipDirCheck takes the
// zip64 record for it (it treats a size of 0xFFFFFFFF as "see zip64");
// archive/zip does not (it looks for zip64 only on 0xFFFF records, a 0xFFFF
// size or a 0xFFFFFFFF offset), and reads the directory from offset 64
// until the records stop: gigabytes, each 47 bytes a *zip.File.
type cdBomb struct {
	size, tailStart int64
	tail            []byte
	rec             []byte
	cdRead, budget  int64
}

func newCDBomb() *cdBomb {
	le := binary.LittleEndian
	size := int64(4<<30 + 1<<20)
	rec := make([]byte, 47) // central directory header, name "a"
	le.PutUint32(rec, 0x02014b50)
	le.PutUint16(rec[4:], 20)
	le.PutUint16(rec[6:], 20)
	le.PutUint16(rec[28:], 1) // name length
	rec[46] = 'a'
	tail := make([]byte, 56+20+22)
	z64 := tail[:56]
	le.PutUint32(z64, 0x06064b50)
	le.PutUint64(z64[4:], 44)
	le.PutUint64(z64[24:], 1)
	le.PutUint64(z64[32:], 1)  // records
	le.PutUint64(z64[40:], 47) // directory size
	off := size - int64(len(tail))
	le.PutUint64(z64[48:], uint64(off-47)) // directory offset
	loc := tail[56:76]
	le.PutUint32(loc, 0x07064b50)
	le.PutUint64(loc[8:], uint64(off))
	le.PutUint32(loc[16:], 1)
	eocd := tail[76:]
	le.PutUint32(eocd, 0x06054b50)
	le.PutUint16(eocd[8:], 1)
	le.PutUint16(eocd[10:], 1)
	le.PutUint32(eocd[12:], 0xFFFFFFFF) // directory size
	le.PutUint32(eocd[16:], 64)         // directory offset
	return &cdBomb{size: size, tailStart: off, tail: tail, rec: rec, budget: 16 << 20}
}

func (b *cdBomb) ReadAt(p []byte, off int64) (int, error) {
	for i := range p {
		pos := off + int64(i)
		switch {
		case pos >= b.size:
			return i, errors.New("EOF")
		case pos >= b.tailStart:
			p[i] = b.tail[pos-b.tailStart]
		case pos < 4:
			p[i] = "PK\x03\x04"[pos]
		case pos < 64:
			p[i] = 0
		case pos < b.tailStart-4096:
			if b.cdRead++; b.cdRead > b.budget {
				return i, errReadBudget
			}
			p[i] = b.rec[(pos-64)%47]
		default:
			p[i] = 0
		}
	}
	return len(p), nil
}

// TestZipDirectoryBoundBypassed: the central directory is to be
// bounded by MaxZipEntries before archive/zip parses it (zipDirCheck), but
// an end record with a 32-bit directory size of 0xFFFFFFFF plus a zip64
// record makes zipDirCheck check one directory and archive/zip read
// another: a 4 GiB file holds ~90 million records and archive/zip builds a
// *zip.File for each (tens of GB) before onlyEntry counts them.
func TestZipDirectoryBoundBypassed(t *testing.T) {
	b := newCDBomb()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := Inspect(b, b.size, Limits{}, "")
	runtime.ReadMemStats(&after)
	bound := int64(defMaxZipEntries) * maxCDEntryLen
	t.Logf("Inspect: %v; read %d MiB of directory records (bound %d KiB), allocated %d MiB",
		err, b.cdRead>>20, bound>>10, (after.TotalAlloc-before.TotalAlloc)>>20)
	if b.cdRead > bound {
		t.Errorf("archive/zip read %d MiB of central directory (stopped by the test), past the %d-entry bound zipDirCheck promises",
			b.cdRead>>20, defMaxZipEntries)
	}
}
