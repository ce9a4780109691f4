package exchange

// Decryption of password-protected zip entries, the two kinds 1C's
// ZipFileWriter writes: traditional PKWARE encryption ("ZipCrypto", APPNOTE
// 6.1; 1C's EncryptionMethodZIP.Zip20, its default) and WinZip AES (method 99
// with a 0x9901 extra field, AE-1 or AE-2;
// https://www.winzip.com/en/support/aes-encryption/). archive/zip still reads
// the container; these readers only turn an entry's raw bytes (OpenRaw) into
// the compressed stream a plain entry would have, a buffer at a time, so an
// encrypted entry is never held whole in memory.

import (
	"archive/zip"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha1"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
)

// Encryption layouts.
const (
	methodAES       = 99     // WinZip AES: the real method is in the 0x9901 extra field
	aesExtraID      = 0x9901 // the WinZip AES extra field
	aesExtraLen     = 7      // vendor version (2), vendor ID "AE" (2), strength (1), method (2)
	aesMACLen       = 10     // the authentication code after the encrypted data
	aesVerifierLen  = 2      // the password verifier after the salt
	aesIterations   = 1000   // PBKDF2-HMAC-SHA1 rounds fixed by the WinZip spec
	zipCryptoHdrLen = 12     // the ZipCrypto encryption header
	flagEncrypted   = 0x1
	flagDescriptor  = 0x8
	flagStrong      = 0x40 // PKWARE strong encryption (APPNOTE 7), which 1C does not write
)

// errPassedCheck marks a ZipCrypto entry whose password passed the
// one-byte check but that then did not read: a wrong password as likely as
// damage.
var errPassedCheck = errors.New("passed ZipCrypto's one-byte password check")

// crypt is how an entry is encrypted, learnt from its headers before a byte
// of it is read; the zero value is a plain entry.
type crypt struct {
	kind     cryptKind
	strength byte   // AES: 1, 2, 3 for 128, 192, 256 bits
	ae2      bool   // AES: AE-2, whose CRC field is 0 and whose HMAC is the only integrity check
	method   uint16 // the real compression method (for AES it is not f.Method)
}

type cryptKind byte

const (
	cryptNone cryptKind = iota
	cryptZip            // ZipCrypto
	cryptAES            // WinZip AES
)

func (c crypt) String() string {
	switch c.kind {
	case cryptZip:
		return "ZipCrypto"
	case cryptAES:
		return fmt.Sprintf("AES-%d", 64+64*int(c.strength))
	}
	return "none"
}

// saltLen is the AES salt length for the entry's strength.
func (c crypt) saltLen() int { return 4 + 4*int(c.strength) }

// overhead is what encryption adds to the entry's stored bytes: they must be
// at least this long, and the ratio limit is applied to what remains, the
// compressed data, as for a plain entry.
func (c crypt) overhead() uint64 {
	switch c.kind {
	case cryptZip:
		return zipCryptoHdrLen
	case cryptAES:
		return uint64(c.saltLen() + aesVerifierLen + aesMACLen)
	}
	return 0
}

// cryptOf reads how an encrypted entry is encrypted (f.Flags bit 0 is set).
// Errors name the entry (q is its quoted name) and wrap ErrBadZip.
func cryptOf(f *zip.File, q string) (crypt, error) {
	switch {
	case f.Flags&flagStrong != 0:
		return crypt{}, fmt.Errorf("%w: entry %s uses PKWARE strong encryption, which is not supported", ErrBadZip, q)
	case f.Method != methodAES:
		return crypt{kind: cryptZip, method: f.Method}, nil
	}
	// WinZip AES. archive/zip keeps the central directory's extra fields in
	// f.Extra; walk them for 0x9901 (APPNOTE 4.5.1: tag, size, data).
	x := f.Extra
	for len(x) >= 4 {
		id, n := binary.LittleEndian.Uint16(x), int(binary.LittleEndian.Uint16(x[2:]))
		x = x[4:]
		if n > len(x) {
			return crypt{}, fmt.Errorf("%w: entry %s has a malformed extra field (0x%04x runs past the end)", ErrBadZip, q, id)
		}
		if id != aesExtraID {
			x = x[n:]
			continue
		}
		d := x[:n]
		if n != aesExtraLen || d[2] != 'A' || d[3] != 'E' {
			return crypt{}, fmt.Errorf("%w: entry %s has a malformed AES extra field 0x9901", ErrBadZip, q)
		}
		c := crypt{kind: cryptAES, strength: d[4], method: binary.LittleEndian.Uint16(d[5:])}
		switch v := binary.LittleEndian.Uint16(d); v {
		case 1:
		case 2:
			c.ae2 = true
		default:
			return crypt{}, fmt.Errorf("%w: entry %s uses unknown AES vendor version %d (want AE-1 or AE-2)", ErrBadZip, q, v)
		}
		if c.strength < 1 || c.strength > 3 {
			return crypt{}, fmt.Errorf("%w: entry %s has unknown AES strength %d (want 1, 2 or 3)", ErrBadZip, q, c.strength)
		}
		return c, nil
	}
	return crypt{}, fmt.Errorf("%w: entry %s is AES-encrypted (method 99) but has no 0x9901 extra field", ErrBadZip, q)
}

// decrypter is an entry's decrypted (still compressed) stream.
type decrypter interface {
	io.Reader
	// finish reads what the decompressor left of the entry and checks its
	// authentication code: nil when the whole entry is proven intact.
	finish() error
}

// decrypt opens the decrypted stream of raw, the entry's stored bytes
// (f.OpenRaw), checking the password first: a wrong one is ErrWrongPassword.
func decrypt(raw io.Reader, f *zip.File, c crypt, name, password string) (decrypter, error) {
	q := quote(name)
	switch c.kind {
	case cryptZip:
		// The check byte is the CRC's high byte, or the DOS mod time's when
		// a data descriptor follows (the writer did not know the CRC yet).
		check := byte(f.CRC32 >> 24)
		if f.Flags&flagDescriptor != 0 {
			check = byte(f.ModifiedTime >> 8)
		}
		return newZipCrypto(raw, password, check, q)
	case cryptAES:
		return newAESReader(raw, f.CompressedSize64, c, password, q)
	}
	return nil, fmt.Errorf("%w: entry %s is not encrypted", ErrBadZip, q) // not reached: callers check c.kind
}

// zipCrypto decrypts traditional PKWARE encryption (APPNOTE 6.1): three
// 32-bit keys stirred by every plaintext byte.
type zipCrypto struct {
	r          io.Reader
	k0, k1, k2 uint32
}

func newZipCrypto(r io.Reader, password string, check byte, q string) (*zipCrypto, error) {
	z := &zipCrypto{r: r, k0: 0x12345678, k1: 0x23456789, k2: 0x34567890}
	for i := 0; i < len(password); i++ {
		z.update(password[i])
	}
	var hdr [zipCryptoHdrLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, shortCrypt(err, q, "its ZipCrypto header")
	}
	z.xor(hdr[:])
	// Only one byte checks the password: 1 in 256 wrong passwords pass it,
	// and then the CRC or the decompressor fails instead.
	if hdr[zipCryptoHdrLen-1] != check {
		return nil, fmt.Errorf("%w: entry %s (ZipCrypto) fails the password check", ErrWrongPassword, q)
	}
	return z, nil
}

func (z *zipCrypto) update(b byte) {
	t := crc32.IEEETable
	z.k0 = t[byte(z.k0)^b] ^ z.k0>>8
	z.k1 = (z.k1+z.k0&0xff)*134775813 + 1
	z.k2 = t[byte(z.k2)^byte(z.k1>>24)] ^ z.k2>>8
}

// xor decrypts p in place.
func (z *zipCrypto) xor(p []byte) {
	for i, c := range p {
		k := z.k2 | 2
		c ^= byte((k * (k ^ 1)) >> 8)
		p[i] = c
		z.update(c)
	}
}

func (z *zipCrypto) Read(p []byte) (int, error) {
	n, err := z.r.Read(p)
	z.xor(p[:n])
	return n, err
}

// finish: ZipCrypto has no authentication; the CRC-32 is its integrity check.
func (z *zipCrypto) finish() error { return nil }

// aesReader decrypts WinZip AES: AES in CTR mode with a little-endian
// counter from 1 (cipher.NewCTR counts big-endian, so the counter is kept
// here), the HMAC-SHA1 of the encrypted bytes checked against the 10-byte
// code that follows them.
type aesReader struct {
	r     io.Reader // the stored bytes after the salt and verifier
	left  uint64    // encrypted bytes not yet read
	block cipher.Block
	ctr   [aes.BlockSize]byte
	ks    [aes.BlockSize]byte // keystream of the current counter
	used  int                 // bytes of ks used
	mac   hash.Hash
	q     string
	err   error // sticky: io.EOF once the code matched
}

func newAESReader(r io.Reader, stored uint64, c crypt, password, q string) (*aesReader, error) {
	salt := make([]byte, c.saltLen()+aesVerifierLen)
	if over := c.overhead(); stored < over {
		// checkEntry refuses this first; kept so the reader stands alone.
		return nil, fmt.Errorf("%w: entry %s has %d bytes, fewer than the %d its encryption adds", ErrBadZip, q, stored, over)
	}
	if _, err := io.ReadFull(r, salt); err != nil {
		return nil, shortCrypt(err, q, "its AES salt")
	}
	salt, verifier := salt[:c.saltLen()], salt[c.saltLen():]
	keyLen := 8 + 8*int(c.strength)
	// pbkdf2.Key fails only where FIPS 140-only mode forbids SHA-1: the
	// entry cannot be decrypted here, as if there were no password.
	dk, err := pbkdf2.Key(sha1.New, password, salt, aesIterations, 2*keyLen+aesVerifierLen)
	if err != nil {
		return nil, fmt.Errorf("%w: entry %s: its AES key cannot be derived: %s", ErrEncrypted, q, oneLine(err.Error()))
	}
	// Two bytes check the password: 1 in 65536 wrong passwords pass them,
	// and then the authentication code fails instead.
	if subtle.ConstantTimeCompare(dk[2*keyLen:], verifier) != 1 {
		return nil, fmt.Errorf("%w: entry %s (%s) fails the password verifier", ErrWrongPassword, q, c)
	}
	block, err := aes.NewCipher(dk[:keyLen])
	if err != nil { // not reached: keyLen is 16, 24 or 32
		return nil, fmt.Errorf("%w: entry %s: %s", ErrEncrypted, q, oneLine(err.Error()))
	}
	return &aesReader{
		r:     r,
		left:  stored - c.overhead(),
		block: block,
		used:  aes.BlockSize,
		mac:   hmac.New(sha1.New, dk[keyLen:2*keyLen]),
		q:     q,
	}, nil
}

func (a *aesReader) Read(p []byte) (int, error) {
	if a.err != nil {
		return 0, a.err
	}
	if a.left == 0 {
		a.err = a.check()
		return 0, a.err
	}
	if uint64(len(p)) > a.left {
		p = p[:a.left]
	}
	n, err := a.r.Read(p)
	a.left -= uint64(n)
	a.mac.Write(p[:n])
	for i := 0; i < n; {
		if a.used == aes.BlockSize {
			a.next()
		}
		k := subtle.XORBytes(p[i:n], p[i:n], a.ks[a.used:])
		i += k
		a.used += k
	}
	switch {
	case err == io.EOF && a.left > 0:
		a.err = io.ErrUnexpectedEOF // the section is shorter than the central directory says
		return n, a.err
	case err == io.EOF:
		err = nil // the code follows: the next Read checks it
	case err != nil:
		a.err = err
	}
	return n, err
}

// next moves to the next keystream block: the counter is 64-bit
// little-endian in the block's first 8 bytes (the rest stay 0).
func (a *aesReader) next() {
	for j := range 8 {
		a.ctr[j]++
		if a.ctr[j] != 0 {
			break
		}
	}
	a.block.Encrypt(a.ks[:], a.ctr[:])
	a.used = 0
}

// check reads the authentication code after the encrypted bytes and compares it.
func (a *aesReader) check() error {
	var code [aesMACLen]byte
	if _, err := io.ReadFull(a.r, code[:]); err != nil {
		return shortCrypt(err, a.q, "its AES authentication code")
	}
	if !hmac.Equal(a.mac.Sum(nil)[:aesMACLen], code[:]) {
		return fmt.Errorf("%w: entry %s fails its AES authentication code: damaged, or a wrong password that passed the verifier", ErrBadZip, a.q)
	}
	return io.EOF
}

// finish reads the rest of the entry, which a decompressor may have left
// after the end of its stream, so that the code covers every stored byte.
func (a *aesReader) finish() error {
	var buf [4096]byte
	for {
		if _, err := a.Read(buf[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			if IsVerdict(err) {
				return err
			}
			return fmt.Errorf("%w: entry %s does not read: %s", ErrBadZip, a.q, oneLine(err.Error()))
		}
	}
}

// shortCrypt explains a read that ended inside an entry's encryption fields.
func shortCrypt(err error, q, what string) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: entry %s ends inside %s", ErrBadZip, q, what)
	}
	return fmt.Errorf("%w: entry %s: reading %s: %s", ErrBadZip, q, what, oneLine(err.Error()))
}
