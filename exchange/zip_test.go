package exchange

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"runtime"
	"strings"
	"testing"
)

// zipEntry describes one entry for makeZip. With raw set, the entry is
// written with CreateRaw: data is then the stored bytes as given and the
// header fields are taken as they are (to forge sizes, CRCs and flags).
type zipEntry struct {
	name   string
	data   string
	method uint16
	raw    bool
	fh     zip.FileHeader // for raw entries
}

func makeZip(t testing.TB, entries ...zipEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := zip.NewWriter(&buf)
	for _, e := range entries {
		if e.raw {
			fh := e.fh
			fh.Name = e.name
			wr, err := w.CreateRaw(&fh)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(wr, e.data); err != nil {
				t.Fatal(err)
			}
			continue
		}
		wr, err := w.CreateHeader(&zip.FileHeader{Name: e.name, Method: e.method})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(wr, e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func deflate(t testing.TB, s string) string {
	var b bytes.Buffer
	w, _ := flate.NewWriter(&b, flate.BestCompression)
	io.WriteString(w, s)
	w.Close()
	return b.String()
}

func inspectBytes(b []byte, lim Limits) (Info, error) {
	return Inspect(bytes.NewReader(b), int64(len(b)), lim, "")
}

func TestZip(t *testing.T) {
	msg := v8msg(v8fields, smallBody)
	std := Header{DialectPlatform, "Stores", "CO", "SHOP1", 5, 2}
	var bigBody strings.Builder // ~1 MB that deflates about 100:1
	for i := range 40000 {
		fmt.Fprintf(&bigBody, "<x>%d</x>", i%1000)
	}
	big := v8msg(v8fields, bigBody.String())
	dBig := deflate(t, big)
	tests := []struct {
		name  string
		zip   []byte
		lim   Limits
		err   error
		entry string
	}{
		{name: "deflate", zip: makeZip(t, zipEntry{name: "Message_CO_SHOP1.xml", data: msg, method: zip.Deflate}), entry: "Message_CO_SHOP1.xml"},
		{name: "store", zip: makeZip(t, zipEntry{name: "Message_CO_SHOP1.XML", data: msg, method: zip.Store}), entry: "Message_CO_SHOP1.XML"},
		{name: "Cyrillic UTF-8 name", zip: makeZip(t, zipEntry{name: "Message_ЦО_ОП.xml", data: msg, method: zip.Deflate}), entry: "Message_ЦО_ОП.xml"},
		{name: "CP866 name", zip: makeZip(t, zipEntry{name: "Message_\x96\x8e_\x8e\x8f.xml", data: deflate(t, msg), raw: true,
			fh: zip.FileHeader{Method: zip.Deflate, NonUTF8: true, CRC32: crc32.ChecksumIEEE([]byte(msg)), UncompressedSize64: uint64(len(msg)), CompressedSize64: uint64(len(deflate(t, msg)))}}),
			entry: "Message_ЦО_ОП.xml"},
		{name: "no entries", zip: makeZip(t), err: ErrBadZip},
		{name: "two entries", zip: makeZip(t, zipEntry{name: "a.xml", data: msg}, zipEntry{name: "b.xml", data: msg}), err: ErrBadZip},
		{name: "directory entry", zip: makeZip(t, zipEntry{name: "dir/"}), err: ErrBadZip},
		{name: "directory and file", zip: makeZip(t, zipEntry{name: "dir/"}, zipEntry{name: "dir/Message_CO_SHOP1.xml", data: msg}), err: ErrBadZip},
		{name: "traversal", zip: makeZip(t, zipEntry{name: "../Message_CO_SHOP1.xml", data: msg}), err: ErrBadZip},
		{name: "absolute", zip: makeZip(t, zipEntry{name: "/tmp/Message_CO_SHOP1.xml", data: msg}), err: ErrBadZip},
		{name: "backslash", zip: makeZip(t, zipEntry{name: `..\Message_CO_SHOP1.xml`, data: msg}), err: ErrBadZip},
		{name: "drive", zip: makeZip(t, zipEntry{name: `C:Message_CO_SHOP1.xml`, data: msg}), err: ErrBadZip},
		{name: "subdirectory", zip: makeZip(t, zipEntry{name: "out/Message_CO_SHOP1.xml", data: msg}), err: ErrBadZip},
		{name: "control character in name", zip: makeZip(t, zipEntry{name: "Message_CO\x1b[2J_SHOP1.xml", data: msg}), err: ErrBadZip},
		{name: "C1 control in name", zip: makeZip(t, zipEntry{name: "Message_CO\u009b2J_SHOP1.xml", data: msg}), err: ErrBadZip},
		{name: "right-to-left override in name", zip: makeZip(t, zipEntry{name: "Message_CO_SHOP1\u202elmx.exe.xml", data: msg}), err: ErrBadZip},
		{name: "not xml name", zip: makeZip(t, zipEntry{name: "Message_CO_SHOP1.txt", data: msg}), err: ErrBadZip},
		{name: "not xml content", zip: makeZip(t, zipEntry{name: "Message_CO_SHOP1.xml", data: "hello"}), err: ErrNotXML},
		{name: "no header inside", zip: makeZip(t, zipEntry{name: "m.xml", data: `<v8msg:Message xmlns:v8msg="http://v8.1c.ru/messages"/>`}), err: ErrNoHeader},
		{name: "truncated xml inside a finished zip", zip: makeZip(t, zipEntry{name: "m.xml", data: msg[:len(msg)/2]}), err: ErrBadZip},
		{name: "encrypted", zip: makeZip(t, zipEntry{name: "Message_CO_SHOP1.xml", data: "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b" + msg, raw: true,
			fh: zip.FileHeader{Method: zip.Store, Flags: 1, CRC32: crc32.ChecksumIEEE([]byte(msg)), UncompressedSize64: uint64(len(msg)), CompressedSize64: uint64(len(msg) + 12)}}), err: ErrEncrypted},
		{name: "bomb: more than declared", zip: makeZip(t, zipEntry{name: "m.xml", data: dBig, raw: true,
			fh: zip.FileHeader{Method: zip.Deflate, CRC32: crc32.ChecksumIEEE([]byte(big)), UncompressedSize64: 4096, CompressedSize64: uint64(len(dBig))}}), err: ErrZipBomb},
		{name: "bomb: ratio", zip: makeZip(t, zipEntry{name: "m.xml", data: big, method: zip.Deflate}), lim: Limits{MaxZipRatio: 10}, err: ErrZipBomb},
		{name: "ratio within default", zip: makeZip(t, zipEntry{name: "m.xml", data: big, method: zip.Deflate}), entry: "m.xml"},
		{name: "declared over MaxSize", zip: makeZip(t, zipEntry{name: "m.xml", data: big, method: zip.Deflate}), lim: Limits{MaxSize: 200 << 10}, err: ErrTooLarge},
		{name: "fewer bytes than declared", zip: makeZip(t, zipEntry{name: "m.xml", data: deflate(t, msg), raw: true,
			fh: zip.FileHeader{Method: zip.Deflate, CRC32: crc32.ChecksumIEEE([]byte(msg)), UncompressedSize64: uint64(len(msg)) + 10, CompressedSize64: uint64(len(deflate(t, msg)))}}), err: ErrBadZip},
		{name: "bad CRC", zip: makeZip(t, zipEntry{name: "m.xml", data: deflate(t, msg), raw: true,
			fh: zip.FileHeader{Method: zip.Deflate, CRC32: 12345, UncompressedSize64: uint64(len(msg)), CompressedSize64: uint64(len(deflate(t, msg)))}}), err: ErrBadZip},
		{name: "corrupt deflate", zip: makeZip(t, zipEntry{name: "m.xml", data: "\xff\xff\xff\xff", raw: true,
			fh: zip.FileHeader{Method: zip.Deflate, UncompressedSize64: 10, CompressedSize64: 4}}), err: ErrBadZip},
		{name: "unsupported method", zip: makeZip(t, zipEntry{name: "m.xml", data: "BZh9", raw: true,
			fh: zip.FileHeader{Method: 12, UncompressedSize64: 4, CompressedSize64: 4}}), err: ErrBadZip},
		{name: "too many entries", zip: makeZip(t, zipEntry{name: "a.xml", data: msg}, zipEntry{name: "b.xml", data: msg}, zipEntry{name: "c.xml", data: msg}),
			lim: Limits{MaxZipEntries: 2}, err: ErrBadZip},
		{name: "starts like a zip", zip: []byte("PK\x03"), err: ErrIncomplete},
		{name: "zip magic, then junk", zip: []byte("PK\x03\x04 this is not a zip at all"), err: ErrIncomplete},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			info, err := inspectBytes(tc.zip, tc.lim)
			if tc.err != nil {
				wantErr(t, "Inspect", err, tc.err)
				t.Logf("%v", err)
				return
			}
			if err != nil {
				t.Fatalf("Inspect: %v", err)
			}
			want := std
			if info.Header != want || info.Format != FormatZip || info.Entry != tc.entry || info.Size != int64(len(tc.zip)) {
				t.Errorf("Inspect = %+v", info)
			}
			if sum := sha256.Sum256(tc.zip); info.SHA256 != hex.EncodeToString(sum[:]) {
				t.Errorf("SHA256 = %s, want %x", info.SHA256, sum)
			}
		})
	}
}

// TestZipBeingWritten cuts a good zip at every byte: with no readable end of
// central directory it is still being written.
func TestZipBeingWritten(t *testing.T) {
	z := makeZip(t, zipEntry{name: "Message_CO_SHOP1.xml", data: v8msg(v8fields, smallBody), method: zip.Deflate})
	if _, err := inspectBytes(z, Limits{}); err != nil {
		t.Fatal(err)
	}
	cd := bytes.Index(z, []byte("PK\x01\x02"))
	if cd < 0 {
		t.Fatal("no central directory")
	}
	// A valid zip cut right before its central directory.
	_, err := inspectBytes(z[:cd], Limits{})
	wantErr(t, "cut before the central directory", err, ErrIncomplete)
	for n := 0; n < len(z); n++ {
		_, err := inspectBytes(z[:n], Limits{})
		wantErr(t, "zip prefix", err, ErrIncomplete)
		if t.Failed() {
			t.Fatalf("at prefix %d/%d", n, len(z))
		}
	}
}

func TestReadFileHeader(t *testing.T) {
	good := fixtures(t, "good")
	for _, name := range []string{"Message_CO_SHOP1.zip", "Message_CO_SHOP1.xml", "Message_ЦО_ОП.xml"} {
		b := good[name]
		r := bytes.NewReader(b)
		h, err := ReadFileHeader(r, int64(len(b)), Limits{}, "")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		info, err := Inspect(r, int64(len(b)), Limits{}, "")
		if err != nil || info.Header != h {
			t.Fatalf("%s: ReadFileHeader %+v, Inspect %+v, %v", name, h, info.Header, err)
		}
	}
	if _, err := ReadFileHeader(bytes.NewReader(nil), 0, Limits{}, ""); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("empty file: %v", err)
	}
}

// TestReadFileHeaderZipDirectoryBounded: ReadFileHeader reads untrusted
// zips too (a push without a name takes its name from the header), so it
// must refuse a central directory of many entries before archive/zip builds
// a zip.File for each, as Inspect does.
func TestReadFileHeaderZipDirectoryBounded(t *testing.T) {
	var buf bytes.Buffer
	w := zip.NewWriter(&buf)
	for i := 0; i < 300000; i++ {
		if _, err := w.CreateHeader(&zip.FileHeader{Name: "a", Method: zip.Store}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := ReadFileHeader(bytes.NewReader(b), int64(len(b)), Limits{}, "")
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d-byte zip: %v; allocated %d KiB", len(b), err, alloc>>10)
	wantErr(t, "ReadFileHeader", err, ErrBadZip)
	if alloc > 4<<20 {
		t.Errorf("allocated %d MiB for a %d MiB zip of 300000 entries", alloc>>20, len(b)>>20)
	}
}
