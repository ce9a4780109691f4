package exchange

import (
	"bytes"
	"encoding/binary"
	"runtime"
	"strings"
	"testing"
)

// recordsZip is a zip of n minimal 46-byte central directory records
// under an end record that says entries entries and a directory of dirSize
// bytes (0: all n records) at the first record.
func recordsZip(n, entries, dirSize int) []byte {
	le := binary.LittleEndian
	var b bytes.Buffer
	b.WriteString("PK\x03\x04")
	b.Write(make([]byte, 60))
	dirOff := b.Len()
	rec := make([]byte, 46)
	le.PutUint32(rec, 0x02014b50)
	le.PutUint16(rec[4:], 20)
	le.PutUint16(rec[6:], 20)
	for range n {
		b.Write(rec)
	}
	if dirSize == 0 {
		dirSize = b.Len() - dirOff
	}
	eocd := make([]byte, 22)
	le.PutUint32(eocd, 0x06054b50)
	le.PutUint16(eocd[8:], uint16(entries))
	le.PutUint16(eocd[10:], uint16(entries))
	le.PutUint32(eocd[12:], uint32(dirSize))
	le.PutUint32(eocd[16:], uint32(dirOff))
	b.Write(eocd)
	return b.Bytes()
}

// moduloDirZip is a zip whose end record declares n mod 65536 entries
// (1 for 65537) over n records: archive/zip reads records until one does
// not read and compares the count modulo 65536 only.
func moduloDirZip(n int) []byte { return recordsZip(n, n, 0) }

// README: "≤ 16 zip entries"; zipDirCheck is meant to refuse a directory of
// many entries before archive/zip builds a zip.File for each (see
// TestReadFileHeaderZipDirectoryBounded). With 65537 records the end
// record says 1 (archive/zip compares the two modulo 65536), and the
// directory's byte size (3 MB) was under the bound of 16 maximal records
// (16 × 196651 bytes): archive/zip parsed them all (found by review). The
// records are counted as archive/zip reads them first.
func TestZipDirectoryCountedAsRead(t *testing.T) {
	b := moduloDirZip(65537)
	for _, tc := range []struct {
		name string
		run  func() error
	}{
		{"Inspect", func() error { _, err := Inspect(bytes.NewReader(b), int64(len(b)), Limits{}, ""); return err }},
		{"ReadFileHeader", func() error {
			_, err := ReadFileHeader(bytes.NewReader(b), int64(len(b)), Limits{}, "")
			return err
		}},
	} {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		err := tc.run()
		runtime.ReadMemStats(&after)
		alloc := after.TotalAlloc - before.TotalAlloc
		t.Logf("%s: %d-byte zip: %v; allocated %d KiB", tc.name, len(b), err, alloc>>10)
		wantErr(t, tc.name, err, ErrBadZip)
		if alloc > 4<<20 {
			t.Errorf("%s: allocated %d MiB for a %d MiB zip whose end record says 1 entry (65537 records)", tc.name, alloc>>20, len(b)>>20)
		}
	}
}

// nsHeader is a v8msg message of about size bytes whose Header declares
// d namespace prefixes and then holds e empty unknown children: each child
// is resolved (nsOf) by a backward scan of every declaration in scope.
func nsHeader(d, e int) string {
	var b strings.Builder
	b.WriteString(`<Message xmlns="http://v8.1c.ru/messages"><Header`)
	for i := 0; i < d; i++ {
		b.WriteString(` xmlns:x=''`)
	}
	b.WriteString(`>`)
	b.WriteString(strings.Repeat("<a/>", e))
	b.WriteString(`<ExchangePlan>P</ExchangePlan><From>A</From><To>B</To><MessageNo>1</MessageNo></Header><Body/></Message>`)
	return b.String()
}

// TestHeaderNamespaceDeclarationsBounded: each element of the header is
// resolved against the namespace declarations in scope; tens of thousands
// of them in a header under 1 MiB took seconds of CPU per file (8.7 s for
// 995 KB on the review machine; found by review). More than maxNSInScope
// in scope is refused as too large; 1C declares about ten.
func TestHeaderNamespaceDeclarationsBounded(t *testing.T) {
	// The root declares one more.
	if _, err := ReadHeader(strings.NewReader(nsHeader(maxNSInScope-1, 1000)), Limits{}); err != nil {
		t.Fatalf("%d declarations in scope: %v", maxNSInScope, err)
	}
	_, err := ReadHeader(strings.NewReader(nsHeader(maxNSInScope, 1000)), Limits{})
	wantErr(t, "declarations past the bound", err, ErrTooLarge)
}
