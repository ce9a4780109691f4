package exchange

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
)

// ErrDamaged marks a stored file that does not read back as it was stored
// (another sha256, more bytes than its size): no retry heals it, so it is
// Permanent and its delivery a dead letter, not a failure retried for ever.
var ErrDamaged = errors.New("the stored file is damaged")

// WholeReader reads a stored file of known size and sha256 for a receiver
// that takes its end from a declared length (an HTTP body with
// Content-Length): it holds the file's last byte back until the source has
// ended there with the right sha256. A file found wrong at its end (a
// store's digest check, more or fewer bytes, another sha256) then fails
// the read one byte short, and the receiver never holds a complete-looking
// copy of the wrong file.
type WholeReader struct {
	r    io.Reader
	left int64 // bytes not yet returned
	sum  hash.Hash
	want string
}

// NewWholeReader reads size bytes of r; sha256hex ("" = not known) is what
// they must hash to.
func NewWholeReader(r io.Reader, size int64, sha256hex string) *WholeReader {
	return &WholeReader{r: r, left: size, sum: sha256.New(), want: sha256hex}
}

// Left is how many bytes are still to be returned.
func (w *WholeReader) Left() int64 { return w.left }

// Read returns the file's bytes, its last only once it is proved whole.
func (w *WholeReader) Read(p []byte) (int, error) {
	switch {
	case w.left <= 0:
		return 0, io.EOF
	case len(p) == 0:
		return 0, nil
	case w.left > 1:
		p = p[:min(int64(len(p)), w.left-1)]
		n, err := w.r.Read(p)
		w.sum.Write(p[:n])
		w.left -= int64(n)
		if err == io.EOF {
			return n, endedEarly(w.left)
		}
		return n, err
	}
	var last [1]byte
	if _, err := io.ReadFull(w.r, last[:]); err != nil {
		if err == io.EOF {
			return 0, endedEarly(1)
		}
		return 0, fmt.Errorf("the stored file's last byte: %w", err)
	}
	w.sum.Write(last[:])
	if err := ended(w.r); err != nil {
		return 0, err
	}
	if got := hex.EncodeToString(w.sum.Sum(nil)); w.want != "" && got != w.want {
		return 0, Permanent(fmt.Errorf("%w: its sha256 is %s, want %s", ErrDamaged, got, w.want))
	}
	p[0] = last[0]
	w.left = 0
	return 1, nil
}

// endedEarly is the error of a stored file whose source ended cleanly left
// bytes before its size: it is shorter than stored, which no retry heals.
func endedEarly(left int64) error {
	bytes := "bytes"
	if left == 1 {
		bytes = "byte"
	}
	return Permanent(fmt.Errorf("%w: it ended %d %s early (%w)", ErrDamaged, left, bytes, io.ErrUnexpectedEOF))
}

// ended says r is at its clean end (io.EOF), or why not.
func ended(r io.Reader) error {
	var probe [1]byte
	for range 100 {
		n, err := r.Read(probe[:])
		switch {
		case n > 0:
			return Permanent(fmt.Errorf("%w: it holds more bytes than its size", ErrDamaged))
		case err == io.EOF:
			return nil
		case err != nil:
			return err
		}
	}
	return io.ErrNoProgress
}
