package exchange

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// failAtEnd hands out all of r and then, in place of io.EOF, an error: a
// store that checks its digest only at the end (bus.payloadReader).
type failAtEnd struct{ r io.Reader }

func (f failAtEnd) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, errors.New("digest mismatch")
	}
	return n, err
}

// TestWholeReader: a file proved whole reads out whole; any other reads
// out at most size-1 bytes and fails, so a receiver counting on a declared
// length never sees it complete.
func TestWholeReader(t *testing.T) {
	file := bytes.Repeat([]byte("<v8msg:Message/>"), 1000)
	sum := sha256.Sum256(file)
	good := hex.EncodeToString(sum[:])
	size := int64(len(file))
	for _, c := range []struct {
		name string
		src  func() io.Reader
		size int64
		sha  string
		want string // "" = reads whole
	}{
		{"whole", func() io.Reader { return bytes.NewReader(file) }, size, good, ""},
		{"whole, one byte at a time", func() io.Reader { return iotest.OneByteReader(bytes.NewReader(file)) }, size, good, ""},
		{"whole, EOF with the data", func() io.Reader { return iotest.DataErrReader(bytes.NewReader(file)) }, size, good, ""},
		{"whole, sha256 not known", func() io.Reader { return bytes.NewReader(file) }, size, "", ""},
		{"one byte", func() io.Reader { return strings.NewReader("x") }, 1, "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881", ""},
		{"other sha256", func() io.Reader { return bytes.NewReader(file) }, size, strings.Repeat("0", 64), "sha256"},
		{"store fails at its end", func() io.Reader { return failAtEnd{bytes.NewReader(file)} }, size, good, "digest mismatch"},
		{"longer than size", func() io.Reader { return bytes.NewReader(append(bytes.Clone(file), 'x')) }, size, good, "more bytes"},
		{"shorter than size", func() io.Reader { return bytes.NewReader(file[:size-10]) }, size, good, "10 bytes early"},
		{"one byte short", func() io.Reader { return bytes.NewReader(file[:size-1]) }, size, good, "1 byte early"},
		{"source error", func() io.Reader {
			return io.MultiReader(bytes.NewReader(file[:100]), iotest.ErrReader(errors.New("link down")))
		}, size, good, "link down"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := NewWholeReader(c.src(), c.size, c.sha)
			got, err := io.ReadAll(w)
			if c.want == "" {
				want := file
				if c.size == 1 {
					want = []byte("x")
				}
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("read %d bytes, %v; want the whole file", len(got), err)
				}
				if w.Left() != 0 {
					t.Errorf("Left %d after the whole file", w.Left())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want one saying %q", err, c.want)
			}
			// A file that reads back other than stored (another sha256,
			// more or fewer bytes than its size: a store's reader ends
			// only at the size it stored) is damaged for good: a dead
			// letter, not a failure retried every few minutes for ever
			// (found by review; fewer bytes by a later one). A source
			// error is the network's.
			if damaged := c.want != "link down" && c.want != "digest mismatch"; errors.Is(err, ErrDamaged) != damaged || IsPermanent(err) != damaged {
				t.Errorf("err %v: damaged %v, permanent %v; want both %v", err, errors.Is(err, ErrDamaged), IsPermanent(err), damaged)
			}
			if int64(len(got)) >= c.size {
				t.Fatalf("read %d of %d bytes before failing: the receiver holds a complete-looking file", len(got), c.size)
			}
		})
	}
}
