package exchange

import (
	"errors"
	"io"
)

var errBadCount = errors.New("exchange: reader returned an invalid byte count")

// bufSize is the read buffer under the XML decoder: big enough for fast
// sequential reads, small enough that reading a header pulls in little body.
const bufSize = 64 << 10

// byteSrc is the buffered reader under encoding/xml (and then under gosax,
// for the body). Unlike bufio.Reader it knows how many bytes were consumed,
// enforces a consumption limit exactly (the limit can be raised once the
// header is read), bounds the size of a single token, and remembers whether
// the underlying reader hit EOF, which is how a truncated document is told
// apart from a malformed one.
type byteSrc struct {
	r    io.Reader
	buf  []byte
	rpos int // next byte to hand out
	end  int // bytes in buf[:end] may be handed out; buf[end:wpos] are past the limit
	wpos int // bytes in buf[:wpos] were read from r

	total    int64 // bytes read from r
	limit    int64 // bytes that may be consumed in all
	limitErr error // returned when the consumer wants byte limit+1

	tokStart int64 // stream offset where the current token began
	maxTok   int64 // max bytes for one token (0: unbounded)
	tokErr   error
	maxTag   int64 // max bytes for one tag, if less than maxTok (0: maxTok)
	tagErr   error
	tokLim   int64 // the limit of the current token: maxTok, or maxTag for a tag

	err    error // sticky error of r (io.EOF included)
	sawEOF bool  // the consumer was handed io.EOF
}

// newByteSrc reads r, a document of size bytes (-1: unknown), through a
// buffer of BufferSize(size, bufSize).
func newByteSrc(r io.Reader, size int64) *byteSrc {
	return &byteSrc{r: r, buf: make([]byte, BufferSize(size, bufSize))}
}

// BufferSize is the size of a buffer that reads a body of size bytes (-1:
// unknown) in as few reads as max allows: size+1 for a smaller body (the
// extra byte lets the last read see the end), else max. A 10 KB message
// needs no 256 KiB buffer.
func BufferSize(size int64, max int) int {
	if size >= 0 && size < int64(max) {
		return int(size) + 1
	}
	return max
}

// pos is the stream offset of the next byte to hand out.
func (s *byteSrc) pos() int64 { return s.total - int64(s.wpos-s.rpos) }

// setLimit changes how many bytes may be consumed in all and the error given past it.
func (s *byteSrc) setLimit(n int64, err error) {
	s.limit, s.limitErr = n, err
	s.setEnd()
}

// setEnd exposes the bytes in buf that are within both the total limit and
// the current token's limit; the rest wait in buf until a limit moves.
func (s *byteSrc) setEnd() {
	start := s.total - int64(s.wpos) // stream offset of buf[0]
	e := s.limit - start
	if s.tokLim > 0 {
		e = min(e, s.tokStart+s.tokLim-start)
	}
	s.end = int(max(int64(s.rpos), min(e, int64(s.wpos))))
}

// startToken marks where the next token starts, for the per-token limit.
// A tag gets the smaller maxTag: encoding/xml turns every attribute into a
// 48-byte xml.Attr, so a tag of tiny attributes (a="" a="" ...) takes some
// 25 times its size in memory, while text, comments and CDATA cost about
// their size.
func (s *byteSrc) startToken() {
	s.tokStart = s.pos()
	if s.maxTok > 0 {
		s.tokLim = s.maxTok
		if s.maxTag > 0 && s.maxTag < s.maxTok && s.tagNext() {
			s.tokLim = s.maxTag
		}
		s.setEnd()
	}
}

// tagNext reports whether the next token is a tag (<name, </name, <?pi)
// rather than text, a comment or CDATA (<!). encoding/xml ends a text token
// by reading the '<' after it and holding it back, so when the last byte
// handed out is '<' the next one is the second byte of the token.
func (s *byteSrc) tagNext() bool {
	if s.rpos > 0 && s.buf[s.rpos-1] == '<' {
		c, ok := s.peek(0)
		return ok && c != '!'
	}
	if c, ok := s.peek(0); !ok || c != '<' {
		return false
	}
	c, ok := s.peek(1)
	return ok && c != '!'
}

// peek returns the byte i places after the next one to hand out, reading
// more input if need be (keeping the byte before the next one, for
// tagNext); ok is false at the end of the input or on a read error, which
// is reported when the byte is wanted.
func (s *byteSrc) peek(i int) (byte, bool) {
	for s.rpos+i >= s.wpos {
		from := max(s.rpos-1, 0)
		if s.err != nil || s.wpos-from == len(s.buf) {
			return 0, false
		}
		s.refill(from)
	}
	return s.buf[s.rpos+i], true
}

// refill moves buf[from:wpos] (bytes still wanted) to the front of buf and
// reads more after them.
func (s *byteSrc) refill(from int) {
	copy(s.buf, s.buf[from:s.wpos])
	s.rpos -= from
	s.wpos -= from
	n, err := readSome(s.r, s.buf[s.wpos:])
	s.wpos += n
	s.total += int64(n)
	s.err = err
	s.setEnd()
}

// ReadByte is what encoding/xml calls for every byte; the fast path is tiny.
func (s *byteSrc) ReadByte() (byte, error) {
	if s.rpos < s.end {
		b := s.buf[s.rpos]
		s.rpos++
		return b, nil
	}
	if err := s.more(); err != nil {
		return 0, err
	}
	b := s.buf[s.rpos]
	s.rpos++
	return b, nil
}

// unreadByte steps back one byte; valid right after a successful ReadByte.
func (s *byteSrc) unreadByte() {
	if s.rpos > 0 {
		s.rpos--
	}
}

// Read lets byteSrc serve as the decoder's io.Reader (it is only used through ReadByte).
func (s *byteSrc) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if s.rpos >= s.end {
		if err := s.more(); err != nil {
			return 0, err
		}
	}
	n := copy(p, s.buf[s.rpos:s.end])
	s.rpos += n
	return n, nil
}

// more makes at least one byte available or says why it cannot.
func (s *byteSrc) more() error {
	for s.rpos >= s.end {
		if s.rpos < s.wpos { // bytes are there but held back by a limit
			if s.pos() >= s.limit {
				return s.limitErr
			}
			if s.tokLim < s.maxTok {
				return s.tagErr
			}
			return s.tokErr
		}
		if s.err != nil {
			if s.err == io.EOF {
				s.sawEOF = true
			}
			return s.err
		}
		s.refill(s.rpos) // all handed out: read into the whole buffer
	}
	return nil
}

// readSome reads at least one byte or returns an error, refusing to spin on
// a reader that keeps returning 0, nil.
func readSome(r io.Reader, p []byte) (int, error) {
	for i := 0; i < 100; i++ {
		n, err := r.Read(p)
		if n < 0 || n > len(p) {
			return 0, errBadCount
		}
		if n > 0 || err != nil {
			return n, err // bytes first; a sticky err is reported once they are used up
		}
	}
	return 0, io.ErrNoProgress
}
