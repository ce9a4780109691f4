package exchange

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math/bits"
	"slices"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/encoding/charmap"
)

// Info is what Inspect learns about one message file.
type Info struct {
	Header Header
	Format Format
	Size   int64  // bytes of the file as given
	SHA256 string // lower-case hex of the file bytes as given (the zip bytes for a zip)
	Entry  string // zip: the name of the XML entry inside
}

// Inspect proves a whole message file complete and reads its header, so a
// pickup takes only finished, routable files. The format is detected from
// the content (a zip signature "PK\x03\x04", or "PK\x05\x06" for an empty
// zip, versus XML), never from the name. A zip must hold exactly one .xml
// file with a bare name, within the size and ratio limits; the entry is
// streamed through CheckXML. SHA256 covers all size bytes of r. On error the
// fields learnt so far (Format, Size, often Header) are set.
//
// password is the node's zip password (1C's archive password), "" when it
// has none. A password-protected entry (ZipCrypto or WinZip AES) is
// decrypted with it as it streams, and is then checked as a plain one is; an
// AES entry must also match its authentication code. Without a password
// such an entry is ErrEncrypted (route it by its file name); with the wrong
// one, ErrWrongPassword.
func Inspect(r io.ReaderAt, size int64, lim Limits, password string) (Info, error) {
	lim = lim.norm()
	info := Info{Size: size}
	switch {
	case size < 0:
		return info, fmt.Errorf("exchange: invalid size %d", size)
	case size == 0:
		return info, fmt.Errorf("%w: file is empty", ErrIncomplete)
	case size > lim.MaxSize:
		return info, fmt.Errorf("%w: file is %d bytes, more than %d", ErrTooLarge, size, lim.MaxSize)
	}
	magic := make([]byte, min(size, 4))
	if n, err := r.ReadAt(magic, 0); n < len(magic) {
		return info, readAtErr(err)
	}
	if IsZip(magic) {
		info.Format = FormatZip
		return inspectZip(r, size, lim, password, info)
	}
	if len(magic) < 4 && (bytes.HasPrefix([]byte("PK\x03\x04"), magic) || bytes.HasPrefix([]byte("PK\x05\x06"), magic)) {
		info.Format = FormatZip
		return info, fmt.Errorf("%w: file starts like a zip but ends after %d bytes", ErrIncomplete, size)
	}
	info.Format = FormatXML
	h := &countHash{h: sha256.New()}
	hdr, err := checkXML(io.TeeReader(io.NewSectionReader(r, 0, size), h), lim, size)
	info.Header = hdr
	if err != nil {
		return info, err
	}
	if h.n != size {
		return info, fmt.Errorf("%w: read %d of %d bytes", ErrIncomplete, h.n, size)
	}
	info.SHA256 = hex.EncodeToString(h.h.Sum(nil))
	return info, nil
}

// InspectWith is Inspect trying passwords in turn on a password-protected
// zip until one reads it; with none it is Inspect without a password. A
// wrong password mostly fails at the entry's first bytes, so trying costs
// little; but one in 256 passes ZipCrypto's check byte and fails later (CRC,
// inflate), so any failure moves on to the next. When none reads it, the
// error is the first that got past the password check (the zip's own
// damage, or such a lucky wrong password), else the first.
func InspectWith(r io.ReaderAt, size int64, lim Limits, passwords []string) (Info, error) {
	if len(passwords) == 0 {
		return Inspect(r, size, lim, "")
	}
	var first Info
	var firstErr error
	for i, pw := range passwordVariants(passwords) {
		info, err := Inspect(r, size, lim, pw)
		if err == nil || info.Format != FormatZip || errors.Is(err, ErrEncrypted) || errors.Is(err, ErrIncomplete) {
			return info, err // read, or no password can help
		}
		if i == 0 || (!pastCheck(firstErr) && pastCheck(err)) {
			first, firstErr = info, err
		}
	}
	return first, firstErr
}

// InspectFile is InspectWith for a file named n, whose header must agree
// with the name. A password-protected zip that there is no password to try
// for is routed by its name (DESIGN §2): proven complete by InspectSealed,
// with sealed as its header (n.ReadBy(node, isNode).Sealed(): the reading
// the node's pickup took it by).
func InspectFile(r io.ReaderAt, size int64, lim Limits, n Name, sealed Header, passwords []string) (Info, error) {
	info, err := InspectWith(r, size, lim, passwords)
	if errors.Is(err, ErrEncrypted) && len(passwords) == 0 {
		if info, err = InspectSealed(r, size, lim); err == nil {
			info.Header = sealed
		}
	}
	if err != nil {
		return info, err
	}
	if err := n.Check(info.Header); err != nil {
		return info, err
	}
	return info, nil
}

// pastCheck says err came after the password check passed: not a wrong
// password told at once.
func pastCheck(err error) bool {
	return !errors.Is(err, ErrWrongPassword) || errors.Is(err, errPassedCheck)
}

// passwordVariants are the byte strings a password may have been encrypted
// with, in order: as written (UTF-8), then, for a password with letters
// beyond ASCII, in the Windows code pages a 1C server on Windows may use
// (ANSI 1251, OEM 866). The zip formats do not say which; a wrong variant
// fails at the entry's first bytes like any wrong password.
func passwordVariants(passwords []string) []string {
	var out []string
	add := func(pw string) {
		if !slices.Contains(out, pw) {
			out = append(out, pw)
		}
	}
	for _, pw := range passwords {
		add(pw)
	}
	for _, pw := range passwords {
		for _, cp := range []*charmap.Charmap{charmap.Windows1251, charmap.CodePage866} {
			if b, err := cp.NewEncoder().String(pw); err == nil {
				add(b)
			}
		}
	}
	return out
}

// IsZip says whether a file's first four bytes are a zip signature (a local
// file header, an empty zip's end record, or a spanned zip's marker): the
// format is told by content, never by name.
func IsZip(b []byte) bool {
	return len(b) == 4 && b[0] == 'P' && b[1] == 'K' &&
		((b[2] == 3 && b[3] == 4) || (b[2] == 5 && b[3] == 6) || (b[2] == 7 && b[3] == 8))
}

// readAtErr explains a short ReadAt: a file shorter than its stated size is still being written.
func readAtErr(err error) error {
	if err == nil || err == io.EOF {
		return fmt.Errorf("%w: file is shorter than its size", ErrIncomplete)
	}
	return fmt.Errorf("exchange: reading message: %w", err)
}

// countHash hashes and counts what is written to it.
type countHash struct {
	h hash.Hash
	n int64
}

func (c *countHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.h.Write(p)
}

// onlyEntry reads a zip's central directory (bounded first: a push's zip is
// untrusted) and returns its one entry.
func onlyEntry(r io.ReaderAt, size int64, lim Limits) (*zip.File, error) {
	f, _, err := onlyEntryAt(r, size, lim)
	return f, err
}

// onlyEntryAt is onlyEntry that also tells where the central directory
// starts, which the entry's stored bytes must end before.
func onlyEntryAt(r io.ReaderAt, size int64, lim Limits) (*zip.File, int64, error) {
	dirStart, err := zipDirCheck(r, size, lim)
	if err != nil {
		return nil, 0, err
	}
	zr, err := zip.NewReader(r, size)
	if err != nil {
		if errors.Is(err, zip.ErrInsecurePath) {
			return nil, 0, fmt.Errorf("%w: an entry name is a path traversal", ErrBadZip)
		}
		return nil, 0, fmt.Errorf("%w: central directory does not read: %s", ErrBadZip, oneLine(err.Error()))
	}
	switch len(zr.File) {
	case 1:
		return zr.File[0], dirStart, nil
	case 0:
		return nil, 0, fmt.Errorf("%w: zip holds no entries, want one .xml message", ErrBadZip)
	}
	return nil, 0, fmt.Errorf("%w: zip holds %d entries, want exactly one .xml message", ErrBadZip, len(zr.File))
}

func inspectZip(r io.ReaderAt, size int64, lim Limits, password string, info Info) (Info, error) {
	f, err := onlyEntry(r, size, lim)
	if err != nil {
		return info, err
	}
	name := entryName(f)
	info.Entry = name
	c, err := checkEntry(f, name, lim, password)
	if err != nil {
		return info, err
	}
	e, err := openEntry(f, name, c, password)
	if err != nil {
		return info, err
	}
	defer e.close()
	hdr, err := checkXML(e.r, lim, int64(min(f.UncompressedSize64, bufSize)))
	info.Header = hdr
	if e.dec != nil {
		// An AES code covers every stored byte: read what the decompressor
		// left, and let a failed code explain whatever else failed, since
		// damage to an AES entry is damage whatever it did to the XML. Its
		// header is then not to be trusted either.
		if ferr := e.dec.finish(); ferr != nil && (err == nil || errors.Is(ferr, ErrBadZip)) {
			info.Header = Header{}
			return info, ferr
		}
	}
	if err != nil {
		switch {
		case errors.Is(err, ErrIncomplete):
			// The zip is finished, so its XML will never be: broken, not "try later".
			err = fmt.Errorf("%w: entry %s: %s", ErrBadZip, quote(name), strings.TrimPrefix(err.Error(), "exchange: "))
		case errors.Is(err, ErrZipBomb) || errors.Is(err, ErrBadZip):
			// From entryReader, which names the entry.
		default:
			err = fmt.Errorf("zip entry %s: %w", quote(name), err)
		}
		if c.kind == cryptZip {
			// ZipCrypto checks a password by one byte: one wrong password
			// in 256 passes it and decrypts to garbage. A ZipCrypto entry
			// that does not read is as likely that as damage, and says so
			// (the next password, if any, is tried on it).
			info.Header = Header{}
			err = fmt.Errorf("%w, or the entry is damaged: %s %w but does not read (%w)", ErrWrongPassword, quote(name), errPassedCheck, err)
		}
		return info, err
	}
	info.SHA256, err = fileSHA256(r, size)
	return info, err
}

// fileSHA256 is the hex sha256 of size bytes of r.
func fileSHA256(r io.ReaderAt, size int64) (string, error) {
	h := sha256.New()
	n, err := io.Copy(h, io.NewSectionReader(r, 0, size))
	if err != nil {
		return "", fmt.Errorf("exchange: reading message: %w", err)
	}
	if n != size {
		return "", fmt.Errorf("%w: read %d of %d bytes", ErrIncomplete, n, size)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// InspectSealed proves a password-protected zip complete without its
// password: the central directory reads and holds one encrypted .xml entry
// within the limits (as far as they can be told without decrypting). Info
// has no Header: the file is routed by its name (DESIGN §2), with the
// header Name.Sealed gives.
func InspectSealed(r io.ReaderAt, size int64, lim Limits) (Info, error) {
	lim = lim.norm()
	info := Info{Size: size, Format: FormatZip}
	if size > lim.MaxSize {
		return info, fmt.Errorf("%w: file is %d bytes, more than %d", ErrTooLarge, size, lim.MaxSize)
	}
	magic := make([]byte, min(max(size, 0), 4))
	if n, err := r.ReadAt(magic, 0); n < len(magic) || size <= 0 {
		return info, readAtErr(err)
	}
	if !IsZip(magic) {
		return info, fmt.Errorf("%w: not a zip", ErrBadZip)
	}
	f, dirStart, err := onlyEntryAt(r, size, lim)
	if err != nil {
		return info, err
	}
	name := entryName(f)
	info.Entry = name
	q := quote(name)
	if f.Flags&flagEncrypted == 0 {
		return info, fmt.Errorf("%w: entry %s is not password-protected", ErrBadZip, q)
	}
	// Unread, the entry must at least be all there: a copy cut short inside
	// it, with a directory after, reads as a zip but cannot be unpacked.
	// In uint64: a zip64 size near 2^64 made the int64 sum wrap and pass
	// (found by review).
	if off, err := f.DataOffset(); err != nil || off < 0 || f.CompressedSize64 > uint64(dirStart) || uint64(off) > uint64(dirStart)-f.CompressedSize64 {
		return info, fmt.Errorf("%w: entry %s: its %d stored bytes are not all in the file before the central directory", ErrBadZip, q, f.CompressedSize64)
	}
	// Any non-empty password gets the checks done before decryption.
	if _, err := checkEntry(f, name, lim, "-"); err != nil {
		return info, err
	}
	info.SHA256, err = fileSHA256(r, size)
	return info, err
}

// checkEntry refuses an entry that is not a plain, bare-named .xml file
// within the limits, or that is encrypted in a way this package cannot
// read, before a byte of it is decompressed, and tells how it is encrypted.
func checkEntry(f *zip.File, name string, lim Limits, password string) (crypt, error) {
	q := quote(name)
	if err := checkEntryName(f, q); err != nil {
		return crypt{}, err
	}
	c := crypt{method: f.Method}
	if f.Flags&flagEncrypted != 0 {
		var err error
		if c, err = encryption(f, q, password); err != nil {
			return c, err
		}
	}
	switch {
	case c.method != zip.Store && c.method != zip.Deflate:
		return c, fmt.Errorf("%w: entry %s uses unsupported compression method %d", ErrBadZip, q, c.method)
	case f.UncompressedSize64 > uint64(lim.MaxSize):
		return c, fmt.Errorf("%w: entry %s declares %d bytes, more than %d", ErrTooLarge, q, f.UncompressedSize64, lim.MaxSize)
	}
	// The ratio is that of the compressed data, without what encryption adds.
	u, comp := f.UncompressedSize64, f.CompressedSize64-c.overhead()
	if hi, lo := bits.Mul64(comp, uint64(lim.MaxZipRatio)); hi == 0 && u > lo {
		return c, fmt.Errorf("%w: entry %s expands %d bytes to %d, more than %d times", ErrZipBomb, q, comp, u, lim.MaxZipRatio)
	}
	return c, nil
}

// checkEntryName refuses an entry that is not a regular, bare-named .xml file.
func checkEntryName(f *zip.File, q string) error {
	switch {
	case strings.HasSuffix(f.Name, "/") || f.Mode().IsDir():
		return fmt.Errorf("%w: entry %s is a directory, want one .xml message", ErrBadZip, q)
	case f.Name == "":
		return fmt.Errorf("%w: entry has an empty name", ErrBadZip)
	case strings.ContainsAny(f.Name, `/\:`) || strings.Contains(f.Name, ".."):
		return fmt.Errorf("%w: entry %s is a path traversal: want a bare file name", ErrBadZip, q)
	case strings.ContainsFunc(f.Name, IsControl):
		return fmt.Errorf("%w: entry %s has control characters or text direction marks in its name", ErrBadZip, q)
	case !f.Mode().IsRegular():
		return fmt.Errorf("%w: entry %s is not a plain file (%s)", ErrBadZip, q, f.Mode().Type())
	case !strings.EqualFold(extOf(f.Name), ".xml"):
		return fmt.Errorf("%w: entry %s is not an .xml file", ErrBadZip, q)
	}
	return nil
}

// encryption tells how an encrypted entry is encrypted, refusing it when
// there is no password or when it is too short to hold what encryption adds.
func encryption(f *zip.File, q, password string) (crypt, error) {
	if password == "" {
		return crypt{}, fmt.Errorf("%w: entry %s is password-protected and the node's zip_password_env is not set", ErrEncrypted, q)
	}
	c, err := cryptOf(f, q)
	if err != nil {
		return c, err
	}
	if over := c.overhead(); f.CompressedSize64 < over {
		return c, fmt.Errorf("%w: entry %s (%s) holds %d bytes, fewer than the %d its encryption adds", ErrBadZip, q, c, f.CompressedSize64, over)
	}
	return c, nil
}

// entry is an open entry: its decompressed bytes, checked for size and CRC,
// and for an encrypted one its decrypter, whose finish checks the rest.
type entry struct {
	r     *entryReader
	dec   decrypter // nil for a plain entry
	close func()
}

// openEntry opens an entry's bytes as they were before zipping: decrypted
// (with the password, when c says it is encrypted), inflated, bounded by the
// declared size and checked against the CRC-32 at the end.
func openEntry(f *zip.File, name string, c crypt, password string) (entry, error) {
	q := quote(name)
	if c.method != zip.Store && c.method != zip.Deflate {
		return entry{}, fmt.Errorf("%w: entry %s uses unsupported compression method %d", ErrBadZip, q, c.method)
	}
	raw, err := f.OpenRaw()
	if err != nil {
		return entry{}, fmt.Errorf("%w: entry %s does not open: %s", ErrBadZip, q, oneLine(err.Error()))
	}
	e := entry{close: func() {}}
	var data io.Reader = raw
	if c.kind != cryptNone {
		if e.dec, err = decrypt(raw, f, c, name, password); err != nil {
			return entry{}, err
		}
		data = e.dec
	}
	if c.method == zip.Deflate {
		fr := flate.NewReader(data)
		data, e.close = fr, func() { fr.Close() }
	}
	// AE-2 stores no CRC (the field is 0): its authentication code is the check.
	e.r = &entryReader{r: data, name: name, declared: f.UncompressedSize64, crc: f.CRC32, noCRC: c.ae2}
	return e, nil
}

func extOf(name string) string {
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		return name[i:]
	}
	return ""
}

// entryName is the entry's name as UTF-8. Zips without the UTF-8 flag carry
// the writer's OEM code page; for 1C on Windows that is CP866, so a name that
// is not valid UTF-8 is decoded as CP866 (Cyrillic node codes stay readable).
func entryName(f *zip.File) string {
	if utf8.ValidString(f.Name) {
		return f.Name
	}
	var b strings.Builder
	for i := 0; i < len(f.Name); i++ {
		c := f.Name[i]
		switch {
		case c < 0x80:
			b.WriteByte(c)
		case c <= 0xAF:
			b.WriteRune(rune(0x410 + int(c) - 0x80)) // А-Я, а-п
		case c >= 0xE0 && c <= 0xEF:
			b.WriteRune(rune(0x440 + int(c) - 0xE0)) // р-я
		case c == 0xF0:
			b.WriteRune('Ё')
		case c == 0xF1:
			b.WriteRune('ё')
		default:
			b.WriteRune(utf8.RuneError)
		}
	}
	return b.String()
}

// entryReader yields an entry's decompressed bytes and fails with ErrZipBomb
// as soon as they exceed the declared size; at the end it checks the size and
// CRC-32, so a finished zip with a damaged entry is ErrBadZip.
type entryReader struct {
	r        io.Reader
	name     string
	declared uint64
	crc      uint32
	noCRC    bool // the entry has no CRC (AES AE-2)
	n        uint64
	sum      uint32
	err      error
}

func (e *entryReader) Read(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.r.Read(p)
	e.n += uint64(n)
	if e.n > e.declared {
		e.err = fmt.Errorf("%w: entry %s yields more than its declared %d bytes", ErrZipBomb, quote(e.name), e.declared)
		return 0, e.err
	}
	e.sum = crc32.Update(e.sum, crc32.IEEETable, p[:n])
	switch {
	case err == io.EOF:
		if e.n < e.declared {
			e.err = fmt.Errorf("%w: entry %s holds %d bytes, fewer than its declared %d", ErrBadZip, quote(e.name), e.n, e.declared)
		} else if e.sum != e.crc && !e.noCRC {
			e.err = fmt.Errorf("%w: entry %s fails its CRC-32 check", ErrBadZip, quote(e.name))
		} else {
			e.err = io.EOF
		}
	case err != nil:
		e.err = fmt.Errorf("%w: entry %s does not decompress: %s", ErrBadZip, quote(e.name), oneLine(err.Error()))
	}
	return n, e.err
}

// Zip record layouts used by zipDirCheck (APPNOTE 4.3.16, 4.3.15, 4.3.14).
const (
	eocdLen       = 22
	eocd64LocLen  = 20
	eocd64Len     = 56
	cdHeaderLen   = 46
	maxCDEntryLen = cdHeaderLen + 3*0xFFFF // fixed part + name, extra, comment
)

// zipDirCheck reads the end-of-central-directory record the way archive/zip
// finds it and refuses, before archive/zip parses anything, a zip that is
// still being written (no record: ErrIncomplete) or whose central directory
// is larger than MaxZipEntries entries can be.
func zipDirCheck(r io.ReaderAt, size int64, lim Limits) (dirStart int64, err error) {
	var buf []byte
	end := int64(-1)
	for i, n := range []int64{1024, 65 * 1024} {
		n = min(n, size)
		buf = make([]byte, n)
		if k, err := r.ReadAt(buf, size-n); int64(k) < n {
			return 0, readAtErr(err)
		}
		if p := findEOCD(buf); p >= 0 {
			buf, end = buf[p:], size-n+int64(p)
			break
		}
		if i == 1 || n == size {
			return 0, fmt.Errorf("%w: zip has no end of central directory (still being written?)", ErrIncomplete)
		}
	}
	le := binary.LittleEndian
	records := uint64(le.Uint16(buf[10:]))
	dirSize := uint64(le.Uint32(buf[12:]))
	dirOff := uint64(le.Uint32(buf[16:]))
	// Exactly archive/zip's condition for looking for a zip64 record: the
	// bound must hold for the directory it will read, not another one.
	if (records == 0xFFFF || dirSize == 0xFFFF || dirOff == 0xFFFFFFFF) && end >= eocd64LocLen {
		loc := make([]byte, eocd64LocLen)
		if k, err := r.ReadAt(loc, end-eocd64LocLen); k < len(loc) {
			return 0, readAtErr(err)
		}
		if le.Uint32(loc) == 0x07064b50 && le.Uint32(loc[4:]) == 0 && le.Uint32(loc[16:]) == 1 {
			off := le.Uint64(loc[8:])
			if off > uint64(size)-eocd64Len || size < eocd64Len {
				return 0, fmt.Errorf("%w: zip64 end of central directory is outside the file", ErrBadZip)
			}
			rec := make([]byte, eocd64Len)
			if k, err := r.ReadAt(rec, int64(off)); k < len(rec) {
				return 0, readAtErr(err)
			}
			if le.Uint32(rec) != 0x06064b50 {
				return 0, fmt.Errorf("%w: zip64 end of central directory does not read", ErrBadZip)
			}
			records, dirSize, dirOff = le.Uint64(rec[32:]), le.Uint64(rec[40:]), le.Uint64(rec[48:])
			end = int64(off)
		}
	}
	max := uint64(lim.MaxZipEntries)
	if records > max {
		return 0, fmt.Errorf("%w: zip holds %d entries, want exactly one .xml message", ErrBadZip, records)
	}
	bound := max * maxCDEntryLen
	if dirSize > bound || (dirOff < uint64(end) && uint64(end)-dirOff > bound) {
		return 0, fmt.Errorf("%w: central directory is larger than %d entries can be", ErrBadZip, max)
	}
	// Where archive/zip takes the directory to start (end is the end
	// record's offset, or the zip64 record's).
	start := end - int64(min(dirSize, uint64(end)))
	if base := start - int64(min(dirOff, uint64(start))); base > 0 && dirOff < uint64(size) {
		// archive/zip's rule for end records that name a wrong base:
		// a directory record at the offset the end record names is
		// where it reads from (found by review: the count read from
		// elsewhere and saw one record of 65,537).
		var sig [4]byte
		if k, _ := r.ReadAt(sig[:], int64(dirOff)); k == len(sig) && binary.LittleEndian.Uint32(sig[:]) == 0x02014b50 {
			start = int64(dirOff)
		}
	}
	if n, err := dirRecords(r, start, size, max); err != nil {
		return 0, err
	} else if n > max {
		// archive/zip reads records until one does not parse, and checks
		// their number against the end record's only modulo 65536: 65537
		// small records under an end record saying 1 were all parsed (17
		// MiB for a 3 MB file) before the count refused them (found by
		// review).
		return 0, fmt.Errorf("%w: zip holds more than %d entries, want exactly one .xml message", ErrBadZip, max)
	}
	return start, nil
}

// dirRecords counts the central directory records from off on as
// archive/zip will read them (one after another until a signature does
// not match), up to one past max.
func dirRecords(r io.ReaderAt, off, size int64, max uint64) (uint64, error) {
	var rec [cdHeaderLen]byte
	le := binary.LittleEndian
	n := uint64(0)
	for ; n <= max && off+cdHeaderLen <= size; n++ {
		if k, err := r.ReadAt(rec[:], off); k < len(rec) {
			return 0, readAtErr(err)
		}
		if le.Uint32(rec[:]) != 0x02014b50 {
			break
		}
		off += cdHeaderLen + int64(le.Uint16(rec[28:])) + int64(le.Uint16(rec[30:])) + int64(le.Uint16(rec[32:]))
	}
	return n, nil
}

// findEOCD is archive/zip's search for the end-of-central-directory record
// in a block: the last signature whose comment fits the block.
func findEOCD(b []byte) int {
	for i := len(b) - eocdLen; i >= 0; i-- {
		if b[i] == 'P' && b[i+1] == 'K' && b[i+2] == 5 && b[i+3] == 6 {
			n := int(b[i+eocdLen-2]) | int(b[i+eocdLen-1])<<8
			if n+eocdLen+i > len(b) {
				return -1
			}
			return i
		}
	}
	return -1
}

// ReadFileHeaderWith is ReadFileHeader trying, on a password-protected
// zip, no password and then passwords in turn (as InspectWith does) until
// one reads it; when none does, the error is the first password's.
func ReadFileHeaderWith(r io.ReaderAt, size int64, lim Limits, passwords []string) (Header, error) {
	h, err := ReadFileHeader(r, size, lim, "")
	if !errors.Is(err, ErrEncrypted) || len(passwords) == 0 {
		return h, err
	}
	var firstErr error
	for i, pw := range passwordVariants(passwords) {
		if h, err = ReadFileHeader(r, size, lim, pw); err == nil {
			return h, nil
		}
		if i == 0 {
			firstErr = err
		}
	}
	return Header{}, firstErr
}

// ReadFileHeader reads only the header of a message file, XML or zip,
// without proving the file complete: cheap enough for a delivery to look at
// what the destination already holds before replacing it. password decrypts
// a password-protected zip as in Inspect.
func ReadFileHeader(r io.ReaderAt, size int64, lim Limits, password string) (Header, error) {
	lim = lim.norm()
	magic := make([]byte, min(max(size, 0), 4))
	if n, err := r.ReadAt(magic, 0); n < len(magic) || size <= 0 {
		return Header{}, readAtErr(err)
	}
	if !IsZip(magic) {
		return newParser(io.NewSectionReader(r, 0, size), lim, size).readHeader()
	}
	f, err := onlyEntry(r, size, lim)
	if err != nil {
		return Header{}, err
	}
	name := entryName(f)
	c := crypt{method: f.Method}
	if f.Flags&flagEncrypted != 0 {
		if c, err = encryption(f, quote(name), password); err != nil {
			return Header{}, err
		}
	}
	e, err := openEntry(f, name, c, password)
	if err != nil {
		return Header{}, err
	}
	defer e.close()
	// A peek stops after the header, so an AES entry's authentication code,
	// which covers every stored byte, is not checked here: the password is
	// (a wrong one fails), and Inspect checks the code before a message is
	// taken.
	return ReadHeader(e.r, lim)
}
