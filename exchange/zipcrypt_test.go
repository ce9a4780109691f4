package exchange

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/text/encoding/charmap"
)

// The password-protected fixtures in testdata/zipcrypt (made by make.sh
// there with Info-ZIP, 7-Zip and libarchive) all hold the good fixture
// Message_ЦО_ОП.xml under this password.
const (
	cryptDir      = "testdata/zipcrypt"
	cryptPassword = "relay-1C-test"
	cryptEntry    = "Message_ЦО_ОП.xml"
)

// cryptFixtures is what each fixture must be: how it is encrypted, and
// whether it has a data descriptor (for ZipCrypto that decides the check byte).
var cryptFixtures = map[string]struct {
	kind       string // crypt.String()
	method     uint16
	ae2        bool
	descriptor bool
}{
	"zipcrypto-infozip-deflate.zip": {"ZipCrypto", zip.Deflate, false, true},
	"zipcrypto-infozip-store.zip":   {"ZipCrypto", zip.Store, false, true},
	"zipcrypto-infozip-stdout.zip":  {"ZipCrypto", zip.Deflate, false, true},
	"zipcrypto-7zip-deflate.zip":    {"ZipCrypto", zip.Deflate, false, false},
	"aes128-7zip-deflate.zip":       {"AES-128", zip.Deflate, true, false},
	"aes192-7zip-deflate.zip":       {"AES-192", zip.Deflate, true, false},
	"aes256-7zip-deflate.zip":       {"AES-256", zip.Deflate, true, false},
	"aes128-7zip-store.zip":         {"AES-128", zip.Store, true, false},
	"aes256-7zip-store.zip":         {"AES-256", zip.Store, true, false},
	"aes256-libarchive-deflate.zip": {"AES-256", zip.Deflate, false, true},
	"aes128-libarchive-store.zip":   {"AES-128", zip.Store, false, true},
}

// cryptFiles reads the fixtures, failing when one is missing or unlisted.
func cryptFiles(t testing.TB) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(cryptDir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range ents {
		if filepath.Ext(e.Name()) != ".zip" {
			continue
		}
		if _, ok := cryptFixtures[e.Name()]; !ok {
			t.Fatalf("%s/%s is not in cryptFixtures: add what it must be", cryptDir, e.Name())
		}
		b, err := os.ReadFile(filepath.Join(cryptDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	for name := range cryptFixtures {
		if _, ok := out[name]; !ok {
			t.Fatalf("fixture %s/%s is missing (sh %s/make.sh)", cryptDir, name, cryptDir)
		}
	}
	return out
}

// plainHeader is the header of the message inside every fixture, read from the plain XML.
func plainHeader(t testing.TB) Header {
	t.Helper()
	b := fixtures(t, "good")[cryptEntry]
	info, err := Inspect(bytes.NewReader(b), int64(len(b)), Limits{}, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := (Header{DialectPlatform, "Магазины", "ЦО", "ОП", 20, 15}); info.Header != want {
		t.Fatalf("plain %s: header %+v, want %+v", cryptEntry, info.Header, want)
	}
	return info.Header
}

func inspectPw(b []byte, pw string) (Info, error) {
	return Inspect(bytes.NewReader(b), int64(len(b)), Limits{}, pw)
}

func readFileHeaderPw(b []byte, pw string) (Header, error) {
	return ReadFileHeader(bytes.NewReader(b), int64(len(b)), Limits{}, pw)
}

// zipFile is the only entry of z.
func zipFile(t testing.TB, z []byte) *zip.File {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(z), int64(len(z)))
	if err != nil || len(zr.File) != 1 {
		t.Fatalf("zip: %v, %d entries", err, len(zr.File))
	}
	return zr.File[0]
}

// TestEncryptedFixtures: each fixture opens with the password to the same
// header as the plain message; without one it is ErrEncrypted, with a wrong
// one ErrWrongPassword, and ReadFileHeader agrees with Inspect throughout.
func TestEncryptedFixtures(t *testing.T) {
	want := plainHeader(t)
	for name, z := range cryptFiles(t) {
		t.Run(name, func(t *testing.T) {
			fx := cryptFixtures[name]
			f := zipFile(t, z)
			c, err := cryptOf(f, quote(f.Name))
			if err != nil {
				t.Fatal(err)
			}
			// What the fixture covers, so a regenerated one cannot silently cover less.
			if c.String() != fx.kind || c.method != fx.method || c.ae2 != fx.ae2 || (f.Flags&flagDescriptor != 0) != fx.descriptor {
				t.Fatalf("fixture is %s method %d AE-2 %v flags %#x; want %+v", c, c.method, c.ae2, f.Flags, fx)
			}

			info, err := inspectPw(z, cryptPassword)
			if err != nil {
				t.Fatalf("Inspect: %v", err)
			}
			sum := sha256.Sum256(z)
			if info.Header != want || info.Format != FormatZip || info.Entry != cryptEntry ||
				info.Size != int64(len(z)) || info.SHA256 != hex.EncodeToString(sum[:]) {
				t.Errorf("Inspect = %+v; want header %+v, zip, entry %q, sha %x", info, want, cryptEntry, sum)
			}
			if h, err := readFileHeaderPw(z, cryptPassword); err != nil || h != want {
				t.Errorf("ReadFileHeader = %+v, %v; want %+v", h, err, want)
			}

			info, err = inspectPw(z, "")
			wantErr(t, "Inspect without a password", err, ErrEncrypted)
			if err != nil && !strings.Contains(err.Error(), "zip_password_env") {
				t.Errorf("error does not say the password is not set: %v", err)
			}
			if info.Format != FormatZip || info.Entry != cryptEntry || info.Header != (Header{}) {
				t.Errorf("Inspect without a password = %+v", info)
			}
			_, err = readFileHeaderPw(z, "")
			wantErr(t, "ReadFileHeader without a password", err, ErrEncrypted)

			// ZipCrypto checks one byte, so 1 in 256 wrong passwords pass it
			// (TestZipCryptoCheckBytePassed); these do not, for these fixtures.
			for _, pw := range []string{"relay-1C-tesT", "wrong", "relay-1C-test "} {
				info, err := inspectPw(z, pw)
				wantErr(t, "Inspect with "+pw, err, ErrWrongPassword)
				if info.Header != (Header{}) {
					t.Errorf("wrong password %q yields header %+v", pw, info.Header)
				}
				if err != nil && !strings.Contains(err.Error(), quote(cryptEntry)) {
					t.Errorf("error does not name the entry: %v", err)
				}
				_, err = readFileHeaderPw(z, pw)
				wantErr(t, "ReadFileHeader with "+pw, err, ErrWrongPassword)
			}

			// ReadFileHeaderWith tries the passwords in turn.
			with := func(pws ...string) (Header, error) {
				return ReadFileHeaderWith(bytes.NewReader(z), int64(len(z)), Limits{}, pws)
			}
			if h, err := with("wrong", cryptPassword); err != nil || h != want {
				t.Errorf("ReadFileHeaderWith(wrong, right) = %+v, %v; want %+v", h, err, want)
			}
			_, err = with()
			wantErr(t, "ReadFileHeaderWith no passwords", err, ErrEncrypted)
			_, err = with("wrong", "relay-1C-tesT")
			wantErr(t, "ReadFileHeaderWith wrong passwords", err, ErrWrongPassword)
		})
	}
}

// TestZipCryptoCheckBytePassed: a wrong password that happens to pass
// ZipCrypto's one check byte still fails, on the CRC, the decompressor or
// the XML, and never yields a header.
func TestZipCryptoCheckBytePassed(t *testing.T) {
	for name, z := range cryptFiles(t) {
		if !strings.HasPrefix(name, "zipcrypto") {
			continue
		}
		t.Run(name, func(t *testing.T) {
			found := 0
			for i := 0; i < 4000 && found < 3; i++ {
				pw := fmt.Sprintf("wrong-%d", i)
				info, err := inspectPw(z, pw)
				if !errors.Is(err, errPassedCheck) {
					if !errors.Is(err, ErrWrongPassword) {
						t.Fatalf("wrong password %q: %v, want ErrWrongPassword", pw, err)
					}
					continue
				}
				found++
				t.Logf("%q passes the check byte: %v", pw, err)
				if err == nil || info.Header != (Header{}) {
					t.Fatalf("wrong password %q: header %+v, error %v", pw, info.Header, err)
				}
				if !errors.Is(err, ErrWrongPassword) || (!errors.Is(err, ErrBadZip) && !errors.Is(err, ErrNotXML)) {
					t.Errorf("wrong password %q: %v, want ErrWrongPassword with the ErrBadZip or ErrNotXML it ran into", pw, err)
				}
				if h, err := readFileHeaderPw(z, pw); err == nil {
					t.Errorf("ReadFileHeader with wrong password %q = %+v", pw, h)
				}
			}
			if found == 0 {
				t.Fatal("no wrong password passed the check byte in 4000 tries")
			}
		})
	}
}

// rezip rewrites a one-entry zip with archive/zip's CreateRaw after edit
// has changed the entry's header and stored bytes: damaged zips that are
// still well-formed containers.
func rezip(t testing.TB, z []byte, edit func(fh *zip.FileHeader, raw []byte) []byte) []byte {
	t.Helper()
	fh, raw := rawEntry(t, z)
	raw = edit(&fh, raw)
	fh.CompressedSize64 = uint64(len(raw))
	return writeRaw(t, fh, raw)
}

// rawEntry is the header and the stored bytes of a one-entry zip's entry.
func rawEntry(t testing.TB, z []byte) (zip.FileHeader, []byte) {
	t.Helper()
	f := zipFile(t, z)
	r, err := f.OpenRaw()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	fh := f.FileHeader
	fh.Extra = bytes.Clone(fh.Extra)
	return fh, raw
}

// writeRaw writes a zip of one entry with header fh and stored bytes raw,
// as they are (fh's sizes are not made to agree).
func writeRaw(t testing.TB, fh zip.FileHeader, raw []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := zip.NewWriter(&buf)
	wr, err := w.CreateRaw(&fh)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wr.Write(raw); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// aesExtra is the 0x9901 field's data in fh.Extra.
func aesExtra(t testing.TB, fh *zip.FileHeader) []byte {
	t.Helper()
	i := bytes.Index(fh.Extra, []byte{0x01, 0x99, 7, 0})
	if i < 0 {
		t.Fatal("no 0x9901 extra field")
	}
	return fh.Extra[i+4 : i+4+7]
}

// TestEncryptedDamage: a damaged encrypted entry is a clean, one-line error
// naming it, never a header: ZipCrypto fails on its CRC, the decompressor or
// the XML; AES on its authentication code, whatever the damage did to the
// content; a broken 0x9901 field or size is refused before decryption.
func TestEncryptedDamage(t *testing.T) {
	files := cryptFiles(t)
	for name, z := range files {
		fx := cryptFixtures[name]
		aes := strings.HasPrefix(name, "aes")
		t.Run(name, func(t *testing.T) {
			// Rewriting without a change keeps the fixture good, so every
			// failure below is the damage's.
			if info, err := inspectPw(rezip(t, z, func(_ *zip.FileHeader, raw []byte) []byte { return raw }), cryptPassword); err != nil || info.Header.MessageNo != 20 {
				t.Fatalf("rezip unchanged: %+v, %v", info.Header, err)
			}
			f := zipFile(t, z)
			off, err := f.DataOffset()
			if err != nil {
				t.Fatal(err)
			}
			stored := int(f.CompressedSize64)
			var dataFrom, dataTo int // the encrypted content within the stored bytes
			if aes {
				c, _ := cryptOf(f, "")
				dataFrom, dataTo = c.saltLen()+aesVerifierLen, stored-aesMACLen
			} else {
				dataFrom, dataTo = zipCryptoHdrLen, stored
			}
			at := []int{dataFrom, dataFrom + 1, (dataFrom + dataTo) / 2, dataTo - 2, dataTo - 1}
			if !aes && fx.method == zip.Deflate {
				// ZipCrypto has no authentication: its last byte's flip
				// changes only that byte, here unused padding bits of the
				// deflate stream, which a plain zip would accept too.
				at = at[:len(at)-1]
			}
			for _, at := range at {
				d := bytes.Clone(z)
				d[int(off)+at] ^= 0x20
				info, err := inspectPw(d, cryptPassword)
				what := fmt.Sprintf("content byte %d of %d flipped", at-dataFrom, dataTo-dataFrom)
				if err == nil || info.Header != (Header{}) && aes {
					t.Fatalf("%s: header %+v, error %v", what, info.Header, err)
				}
				switch {
				case aes:
					wantErr(t, what, err, ErrBadZip)
					if !strings.Contains(err.Error(), "authentication code") {
						t.Errorf("%s: %v, want the authentication code to fail", what, err)
					}
				default:
					// ZipCrypto's keys follow the plaintext, so all after the
					// flip decrypts to garbage: the decompressor, the CRC, the
					// declared size or the XML fails, whichever sees it first.
					if !errors.Is(err, ErrBadZip) && !errors.Is(err, ErrNotXML) && !errors.Is(err, ErrZipBomb) {
						t.Errorf("%s: %v, want ErrBadZip, ErrZipBomb or ErrNotXML", what, err)
					}
				}
				if !strings.Contains(err.Error(), quote(cryptEntry)) {
					t.Errorf("%s: error does not name the entry: %v", what, err)
				}
				oneLineErr(t, what, err)
			}
			if !aes {
				return
			}
			c, _ := cryptOf(f, "")
			// The salt and the verifier are what the password is checked against.
			for at, what := range map[int]string{0: "salt", c.saltLen(): "verifier"} {
				d := bytes.Clone(z)
				d[int(off)+at] ^= 1
				_, err := inspectPw(d, cryptPassword)
				wantErr(t, what+" flipped", err, ErrWrongPassword)
			}
			// Every byte of the code counts.
			for _, at := range []int{dataTo, dataTo + aesMACLen - 1} {
				d := bytes.Clone(z)
				d[int(off)+at] ^= 0x80
				_, err := inspectPw(d, cryptPassword)
				wantErr(t, "code flipped", err, ErrBadZip)
			}
			// A code cut short, down to nothing and below the salt.
			for _, cut := range []int{1, 5, aesMACLen, aesMACLen + 7, stored - 3} {
				d := rezip(t, z, func(_ *zip.FileHeader, raw []byte) []byte { return raw[:len(raw)-cut] })
				info, err := inspectPw(d, cryptPassword)
				wantErr(t, fmt.Sprintf("stored bytes cut by %d", cut), err, ErrBadZip)
				if info.Header != (Header{}) {
					t.Errorf("cut by %d: header %+v", cut, info.Header)
				}
				_, err = readFileHeaderPw(d, cryptPassword)
				if cut == stored-3 {
					wantErr(t, "ReadFileHeader, cut below the salt", err, ErrBadZip)
				}
				t.Logf("cut by %d: %v", cut, err)
			}
		})
	}
}

// TestAESExtraField: a broken or unknown 0x9901 field is ErrBadZip, from
// Inspect and ReadFileHeader alike, and AE-1 and AE-2 differ only in the CRC.
func TestAESExtraField(t *testing.T) {
	files := cryptFiles(t)
	ae2 := files["aes256-7zip-deflate.zip"]
	ae1 := files["aes256-libarchive-deflate.zip"]
	edits := map[string]func(fh *zip.FileHeader){
		"strength 0":        func(fh *zip.FileHeader) { aesExtra(t, fh)[4] = 0 },
		"strength 4":        func(fh *zip.FileHeader) { aesExtra(t, fh)[4] = 4 },
		"strength 255":      func(fh *zip.FileHeader) { aesExtra(t, fh)[4] = 255 },
		"version 0":         func(fh *zip.FileHeader) { aesExtra(t, fh)[0] = 0 },
		"version 3":         func(fh *zip.FileHeader) { aesExtra(t, fh)[0] = 3 },
		"vendor AF":         func(fh *zip.FileHeader) { aesExtra(t, fh)[3] = 'F' },
		"method bzip2":      func(fh *zip.FileHeader) { aesExtra(t, fh)[5] = 12 },
		"method 99":         func(fh *zip.FileHeader) { aesExtra(t, fh)[5] = 99 },
		"strong encryption": func(fh *zip.FileHeader) { fh.Flags |= flagStrong },
		"no 0x9901": func(fh *zip.FileHeader) {
			i := bytes.Index(fh.Extra, []byte{0x01, 0x99})
			fh.Extra = append(fh.Extra[:i], fh.Extra[i+11:]...)
		},
		"0x9901 of 6 bytes": func(fh *zip.FileHeader) {
			i := bytes.Index(fh.Extra, []byte{0x01, 0x99})
			fh.Extra[i+2] = 6
			fh.Extra = fh.Extra[:len(fh.Extra)-1]
		},
		"0x9901 runs past the end": func(fh *zip.FileHeader) {
			i := bytes.Index(fh.Extra, []byte{0x01, 0x99})
			fh.Extra = fh.Extra[:i+9]
		},
		"0x9901 cut to 3 bytes": func(fh *zip.FileHeader) {
			i := bytes.Index(fh.Extra, []byte{0x01, 0x99})
			fh.Extra = fh.Extra[:i+3]
		},
	}
	for name, edit := range edits {
		d := rezip(t, ae2, func(fh *zip.FileHeader, raw []byte) []byte { edit(fh); return raw })
		_, err := inspectPw(d, cryptPassword)
		wantErr(t, name, err, ErrBadZip)
		t.Logf("%s: %v", name, err)
		_, err = readFileHeaderPw(d, cryptPassword)
		wantErr(t, name+" (ReadFileHeader)", err, ErrBadZip)
		// Without a password nothing is read past the encryption flag.
		_, err = inspectPw(d, "")
		wantErr(t, name+" (no password)", err, ErrEncrypted)
	}

	// AE-1 keeps the CRC and checks it: as AE-1, 7-Zip's AE-2 entry (CRC 0) fails it.
	d := rezip(t, ae2, func(fh *zip.FileHeader, raw []byte) []byte { aesExtra(t, fh)[0] = 1; return raw })
	_, err := inspectPw(d, cryptPassword)
	wantErr(t, "AE-2 read as AE-1", err, ErrBadZip)
	if err != nil && !strings.Contains(err.Error(), "CRC") {
		t.Errorf("AE-2 read as AE-1: %v, want a CRC failure", err)
	}
	// AE-2 ignores the CRC field: libarchive's AE-1 entry as AE-2 with a junk CRC passes.
	d = rezip(t, ae1, func(fh *zip.FileHeader, raw []byte) []byte {
		aesExtra(t, fh)[0] = 2
		fh.CRC32 ^= 0xdeadbeef
		return raw
	})
	if info, err := inspectPw(d, cryptPassword); err != nil || info.Header.MessageNo != 20 {
		t.Errorf("AE-1 read as AE-2 with a junk CRC: %+v, %v", info.Header, err)
	}
	// And AE-1 with a wrong CRC fails it.
	d = rezip(t, ae1, func(fh *zip.FileHeader, raw []byte) []byte { fh.CRC32 ^= 1; return raw })
	_, err = inspectPw(d, cryptPassword)
	wantErr(t, "AE-1 with a wrong CRC", err, ErrBadZip)
}

// TestEncryptedLimits: the ratio limit applies to the compressed data, not
// counting what encryption adds; the size limits apply as to a plain entry.
func TestEncryptedLimits(t *testing.T) {
	files := cryptFiles(t)
	for _, name := range []string{"zipcrypto-7zip-deflate.zip", "aes256-7zip-deflate.zip"} {
		z := files[name]
		f := zipFile(t, z)
		c, err := cryptOf(f, "")
		if err != nil {
			t.Fatal(err)
		}
		comp := f.CompressedSize64 - c.overhead()
		ratio := f.UncompressedSize64/comp + 1 // declaring comp*ratio holds the entry
		// Declaring one byte more than the ratio allows is a bomb (counted
		// from the whole stored size it would not be); declaring exactly as
		// much is not (it then fails, holding fewer bytes than declared).
		for _, tc := range []struct {
			declared uint64
			want     error
		}{{comp*ratio + 1, ErrZipBomb}, {comp * ratio, ErrBadZip}} {
			d := rezip(t, z, func(fh *zip.FileHeader, raw []byte) []byte { fh.UncompressedSize64 = tc.declared; return raw })
			_, err := Inspect(bytes.NewReader(d), int64(len(d)), Limits{MaxZipRatio: int64(ratio)}, cryptPassword)
			wantErr(t, fmt.Sprintf("%s declaring %d", name, tc.declared), err, tc.want)
			if errors.Is(tc.want, ErrBadZip) && errors.Is(err, ErrZipBomb) {
				t.Errorf("%s: the ratio counted the encryption overhead: %v", name, err)
			}
		}
		_, err = Inspect(bytes.NewReader(z), int64(len(z)), Limits{MaxSize: 2000}, cryptPassword)
		wantErr(t, name+" over MaxSize", err, ErrTooLarge)
	}
}

// TestEncryptedBeingWritten: an encrypted zip cut anywhere is still being written.
func TestEncryptedBeingWritten(t *testing.T) {
	for name, z := range cryptFiles(t) {
		for n := 0; n < len(z); n++ {
			_, err := inspectPw(z[:n], cryptPassword)
			if !errors.Is(err, ErrIncomplete) {
				t.Fatalf("%s cut at %d/%d: %v, want ErrIncomplete", name, n, len(z), err)
			}
		}
	}
}

// TestEncryptedMemoryBounded: a large encrypted entry streams through
// decryption: Inspect allocates far less than the entry (32 MiB; 4 MiB
// under -race, whose encoding/xml would take half a minute) or its
// ciphertext (3/4 of that: the body is random base64, which deflates
// little). Info-ZIP encrypts it; without a zip command this is skipped.
func TestEncryptedMemoryBounded(t *testing.T) {
	zipBin, err := exec.LookPath("zip")
	if err != nil {
		t.Skip("no zip command to encrypt a large entry with")
	}
	size := 32 << 20
	if raceDetector {
		size = 4 << 20
	}
	dir := t.TempDir()
	var body strings.Builder
	rng := rand.NewChaCha8([32]byte{1})
	chunk := make([]byte, 3<<10)
	for body.Len() < size {
		rng.Read(chunk)
		body.WriteString("<b>")
		body.WriteString(base64.StdEncoding.EncodeToString(chunk))
		body.WriteString("</b>\n")
	}
	msg := v8msg(v8fields, body.String())
	body.Reset()
	if err := os.WriteFile(filepath.Join(dir, "Message_CO_SHOP1.xml"), []byte(msg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(zipBin, "-q", "-1", "-P", cryptPassword, "big.zip", "Message_CO_SHOP1.xml")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("zip: %v: %s", err, out)
	}
	z, err := os.ReadFile(filepath.Join(dir, "big.zip"))
	if err != nil {
		t.Fatal(err)
	}
	if f := zipFile(t, z); f.Flags&flagEncrypted == 0 || f.UncompressedSize64 != uint64(len(msg)) {
		t.Fatalf("zip wrote flags %#x, %d bytes", f.Flags, f.UncompressedSize64)
	}
	msg = ""
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	info, err := inspectPw(z, cryptPassword)
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d MiB zip: %+v, %v; allocated %d KiB", len(z)>>20, info.Header, err, alloc>>10)
	if err != nil || info.Header != (Header{DialectPlatform, "Stores", "CO", "SHOP1", 5, 2}) {
		t.Fatalf("Inspect = %+v, %v", info.Header, err)
	}
	if alloc > 2<<20 {
		t.Errorf("allocated %d MiB inspecting a %d MiB encrypted zip", alloc>>20, len(z)>>20)
	}
	if _, err := inspectPw(z, "wrong"); !errors.Is(err, ErrWrongPassword) {
		t.Errorf("wrong password: %v", err)
	}
}

// TestAESCounter pins the WinZip AES counter, little-endian from 1 in the
// first 8 bytes, where the fixtures cannot: they end before block 256,
// whose carry reaches the second byte (cipher.NewCTR, counting big-endian
// in the last bytes, fails the fixtures from the second block on).
func TestAESCounter(t *testing.T) {
	f := zipFile(t, cryptFiles(t)["aes128-7zip-store.zip"])
	c, _ := cryptOf(f, "")
	r, err := f.OpenRaw()
	if err != nil {
		t.Fatal(err)
	}
	a, err := newAESReader(r, f.CompressedSize64, c, cryptPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	var steps uint64
	for _, n := range []uint64{1, 2, 255, 256, 257, 65536, 1 << 32} {
		if n > 1<<20 { // jump ahead instead of counting up
			binary.LittleEndian.PutUint64(a.ctr[:], n-1)
			steps = n - 1
		}
		for ; steps < n; steps++ {
			a.next()
		}
		var want [16]byte
		binary.LittleEndian.PutUint64(want[:], n)
		if a.ctr != want {
			t.Fatalf("counter %d = %x, want %x", n, a.ctr, want)
		}
		var ks [16]byte
		a.block.Encrypt(ks[:], want[:])
		if a.ks != ks {
			t.Fatalf("keystream %d is not the counter encrypted", n)
		}
	}
}

// failAt is a file whose small reads (the encryption fields, read on
// their own, are under 64 bytes) of the entry's stored bytes [from, to)
// fail at byte at. The directory's reads, up to the whole of a small file,
// do not.
type failAt struct {
	r            *bytes.Reader
	from, to, at int64
}

var errDisk = errors.New("disk on fire")

func (f failAt) ReadAt(p []byte, off int64) (int, error) {
	if len(p) < 64 && off >= f.from && off < f.to && off <= f.at && f.at < off+int64(len(p)) {
		n, _ := f.r.ReadAt(p[:f.at-off], off)
		return n, errDisk
	}
	return f.r.ReadAt(p, off)
}

// TestEncryptedReadError: a read that fails inside the encryption header or
// the authentication code is a one-line ErrBadZip naming the entry and the
// reader's error, not a wrong password or a panic.
func TestEncryptedReadError(t *testing.T) {
	for name, z := range cryptFiles(t) {
		f := zipFile(t, z)
		off, err := f.DataOffset()
		if err != nil {
			t.Fatal(err)
		}
		end := off + int64(f.CompressedSize64)
		at := []int64{off + 5} // inside the ZipCrypto header, the AES salt
		if strings.HasPrefix(name, "aes") {
			at = append(at, end-3) // inside the code
		}
		for _, a := range at {
			r := failAt{bytes.NewReader(z), off, end, a}
			_, err := Inspect(r, int64(len(z)), Limits{}, cryptPassword)
			wantErr(t, fmt.Sprintf("%s failing at %d", name, a-off), err, ErrBadZip)
			if err != nil && (!strings.Contains(err.Error(), errDisk.Error()) || !strings.Contains(err.Error(), quote(cryptEntry))) {
				t.Errorf("%s failing at %d: %v", name, a-off, err)
			}
		}
	}
}

// InspectWith tries the channel's passwords in turn: a wrong one before the
// right one costs nothing but the try; all wrong is ErrWrongPassword, none
// ErrEncrypted; a plain message reads whatever is given.
func TestInspectWithPasswords(t *testing.T) {
	want := plainHeader(t)
	files := cryptFiles(t)
	plain := fixtures(t, "good")[cryptEntry]
	for _, name := range []string{"zipcrypto-infozip-deflate.zip", "aes256-7zip-deflate.zip"} {
		z := files[name]
		for _, c := range []struct {
			passwords []string
			err       error
		}{
			{[]string{"other-pair's", cryptPassword}, nil},
			{[]string{cryptPassword, "other-pair's"}, nil},
			{[]string{"other-pair's", "guess"}, ErrWrongPassword},
			{nil, ErrEncrypted},
		} {
			info, err := InspectWith(bytes.NewReader(z), int64(len(z)), Limits{}, c.passwords)
			if !errors.Is(err, c.err) || (c.err == nil && info.Header != want) {
				t.Errorf("%s with %q: header %+v, err %v; want err %v", name, c.passwords, info.Header, err, c.err)
			}
		}
	}
	if info, err := InspectWith(bytes.NewReader(plain), int64(len(plain)), Limits{}, []string{"guess"}); err != nil || info.Header != want {
		t.Errorf("plain message with a password: %+v, %v", info.Header, err)
	}

	// A wrong password that passes ZipCrypto's check byte fails later, on
	// the CRC or the inflate: the right one after it must still be tried.
	z := files["zipcrypto-infozip-deflate.zip"]
	lucky := ""
	for i := 0; i < 4000 && lucky == ""; i++ {
		if pw := fmt.Sprintf("wrong-%d", i); errors.Is(func() error { _, err := inspectPw(z, pw); return err }(), errPassedCheck) {
			lucky = pw
		}
	}
	if lucky == "" {
		t.Fatal("no wrong password passed the check byte in 4000 tries")
	}
	if info, err := InspectWith(bytes.NewReader(z), int64(len(z)), Limits{}, []string{lucky, cryptPassword}); err != nil || info.Header != want {
		t.Errorf("%q (passes the check byte) then the right one: %+v, %v", lucky, info.Header, err)
	}
	info, err := InspectWith(bytes.NewReader(z), int64(len(z)), Limits{}, []string{"guess", lucky})
	if !errors.Is(err, errPassedCheck) || !errors.Is(err, ErrWrongPassword) || info.Header != (Header{}) {
		t.Errorf("a wrong password, then %q (passes the check byte): %+v, %v; want its later failure reported", lucky, info.Header, err)
	}
}

// A Cyrillic archive password may have been encrypted in a Windows code
// page rather than UTF-8 (the zip formats do not say which): InspectWith
// reads a zip whose password bytes are ANSI 1251 or OEM 866, given the
// password as configured (UTF-8). Info-ZIP encrypts with the raw bytes.
func TestInspectWithCyrillicPassword(t *testing.T) {
	zipBin, err := exec.LookPath("zip")
	if err != nil {
		t.Skip("no zip command to encrypt with")
	}
	const password = "Пароль-ЦО"
	want := plainHeader(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, cryptEntry), fixtures(t, "good")[cryptEntry], 0o600); err != nil {
		t.Fatal(err)
	}
	for _, cp := range []*charmap.Charmap{charmap.Windows1251, charmap.CodePage866, nil} {
		raw := password
		if cp != nil {
			if raw, err = cp.NewEncoder().String(password); err != nil {
				t.Fatal(err)
			}
		}
		out := filepath.Join(dir, "out.zip")
		os.Remove(out)
		cmd := exec.Command(zipBin, "-q", "-P", raw, "out.zip", cryptEntry)
		cmd.Dir = dir
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("zip: %v: %s", err, b)
		}
		z, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		info, err := InspectWith(bytes.NewReader(z), int64(len(z)), Limits{}, []string{"other", password})
		if err != nil || info.Header != want {
			t.Errorf("password bytes in %v: %+v, %v", cp, info.Header, err)
		}
	}
}

// Without a password to try, a password-protected zip is routed by its
// file name (DESIGN §2): InspectSealed proves the container complete and
// hashes it, InspectFile gives it the name's header. A wrong password is
// not a reason to route by name, and a plain or broken zip is not sealed.
func TestRoutedByName(t *testing.T) {
	files := cryptFiles(t)
	n, err := ParseName("Message_ЦО_ОП.zip")
	if err != nil {
		t.Fatal(err)
	}
	for name, z := range files {
		info, err := InspectFile(bytes.NewReader(z), int64(len(z)), Limits{}, n, n.Sealed(), nil)
		sum := sha256.Sum256(z)
		if err != nil || info.Header != (Header{Dialect: DialectName, From: "ЦО", To: "ОП"}) || info.Format != FormatZip ||
			info.SHA256 != hex.EncodeToString(sum[:]) || info.Entry != cryptEntry {
			t.Errorf("%s without a password: %+v, %v", name, info, err)
		}
		if _, err := InspectFile(bytes.NewReader(z), int64(len(z)), Limits{}, n, n.Sealed(), []string{"guess"}); !errors.Is(err, ErrWrongPassword) {
			t.Errorf("%s with a wrong password: %v, want ErrWrongPassword (not routed by name)", name, err)
		}
		for cut := int64(0); cut < int64(len(z)); cut += 97 {
			if _, err := InspectSealed(bytes.NewReader(z[:cut]), cut, Limits{}); err == nil {
				t.Errorf("%s cut at %d: sealed zip taken as complete", name, cut)
			}
		}
	}
	other, _ := ParseName("Message_A_B.zip")
	z := files["aes256-7zip-deflate.zip"]
	if _, err := InspectFile(bytes.NewReader(z), int64(len(z)), Limits{}, other, other.Sealed(), nil); err != nil {
		t.Errorf("routed by name: the name is the only header there is: %v", err)
	}
	plain := fixtures(t, "good")["Message_CO_SHOP1.zip"]
	if _, err := InspectSealed(bytes.NewReader(plain), int64(len(plain)), Limits{}); !errors.Is(err, ErrBadZip) {
		t.Errorf("plain zip as sealed: %v, want ErrBadZip", err)
	}
}
