package exchange

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// seeds are the fixtures plus variants, for every fuzz target.
func seeds(f *testing.F) [][]byte {
	var out [][]byte
	if _, err := statFixtures(); err == nil {
		for _, kind := range []string{"good", "bad"} {
			for _, b := range fixtures(f, kind) {
				out = append(out, b)
			}
		}
	}
	for _, s := range []string{
		v8msg(v8fields, smallBody),
		strings.TrimPrefix(v8msg(v8fields, ""), "\ufeff"),
		v8msg(v8with("0"), ""),
		edMsg(edConf, "<x>Ц</x>"),
		rulesMsg(`ПланОбмена="П" ОтКого="А" Кому="Б" НомерИсходящегоСообщения="9"`, "<ПравилаОбмена/>"),
		"<!DOCTYPE x [<!ENTITY a \"b\">]><x>&a;</x>",
		"", "\ufeff", "PK\x03\x04", "PK\x05\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
	} {
		out = append(out, []byte(s))
	}
	out = append(out, makeZip(f, zipEntry{name: "m.xml", data: v8msg(v8fields, smallBody), method: zip.Deflate}))
	out = append(out, makeZip(f, zipEntry{name: "m.xml", data: edMsg(edConf, ""), method: zip.Store}))
	// The password-protected fixtures, which FuzzInspect opens with their
	// password so that mutations reach the decryption.
	if ents, err := os.ReadDir(cryptDir); err == nil {
		for _, e := range ents {
			if b, err := os.ReadFile(filepath.Join(cryptDir, e.Name())); err == nil && filepath.Ext(e.Name()) == ".zip" {
				out = append(out, b)
			}
		}
	}
	return out
}

// checkResult asserts what must hold for any input: errors are ours and one
// line; success means a usable header.
func checkResult(t *testing.T, what string, h Header, err error) {
	t.Helper()
	if err != nil {
		if !IsVerdict(err) {
			t.Fatalf("%s: error wraps no sentinel: %v", what, err)
		}
		oneLineErr(t, what, err)
		return
	}
	if h.ExchangePlan == "" || h.From == "" || h.To == "" || h.MessageNo < 1 || h.Dialect == "" {
		t.Fatalf("%s: success with an unusable header %+v", what, h)
	}
}

// FuzzInspect runs Inspect with the fixtures' zip password, so that the
// decryption of ZipCrypto and AES entries is fuzzed too, and checks that the
// password changes nothing for input that is not encrypted and that
// ReadFileHeader agrees with a successful Inspect.
func FuzzInspect(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		lim := Limits{MaxHeaderBytes: 64 << 10, MaxTokenBytes: 1 << 20, MaxSize: 8 << 20}
		info, err := Inspect(bytes.NewReader(data), int64(len(data)), lim, cryptPassword)
		checkResult(t, "Inspect", info.Header, err)
		noPw, noPwErr := Inspect(bytes.NewReader(data), int64(len(data)), lim, "")
		checkResult(t, "Inspect without a password", noPw.Header, noPwErr)
		if !errors.Is(noPwErr, ErrEncrypted) && (noPw != info || fmt.Sprint(noPwErr) != fmt.Sprint(err)) {
			t.Fatalf("the password changed a result that is not encrypted: %+v, %v; without: %+v, %v", info, err, noPw, noPwErr)
		}
		if errors.Is(err, ErrEncrypted) {
			t.Fatalf("ErrEncrypted with a password: %v", err)
		}
		// Routed by name: only a zip Inspect finds password-protected.
		sealed, serr := InspectSealed(bytes.NewReader(data), int64(len(data)), lim)
		if serr == nil {
			sum := sha256.Sum256(data)
			if !errors.Is(noPwErr, ErrEncrypted) || sealed.SHA256 != hex.EncodeToString(sum[:]) || sealed.Header != (Header{}) {
				t.Fatalf("InspectSealed took %+v, which Inspect without a password calls %v", sealed, noPwErr)
			}
		}
		h, herr := ReadFileHeader(bytes.NewReader(data), int64(len(data)), lim, cryptPassword)
		checkResult(t, "ReadFileHeader", h, herr)
		if err != nil {
			return
		}
		if herr != nil || h != info.Header {
			t.Fatalf("Inspect ok with %+v but ReadFileHeader = %+v, %v", info.Header, h, herr)
		}
		sum := sha256.Sum256(data)
		if info.SHA256 != hex.EncodeToString(sum[:]) || info.Size != int64(len(data)) {
			t.Fatalf("sha/size %s/%d wrong", info.SHA256, info.Size)
		}
		if info.Format == FormatXML {
			h, err := ReadHeader(bytes.NewReader(data), lim)
			if err != nil || h != info.Header {
				t.Fatalf("Inspect ok with %+v but ReadHeader = %+v, %v", info.Header, h, err)
			}
		}
	})
}

func FuzzReadHeader(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		lim := Limits{MaxHeaderBytes: 64 << 10, MaxTokenBytes: 1 << 20}
		h, err := ReadHeader(bytes.NewReader(data), lim)
		checkResult(t, "ReadHeader", h, err)
		ch, cerr := CheckXML(bytes.NewReader(data), lim)
		checkResult(t, "CheckXML", ch, cerr)
		if cerr == nil && (err != nil || h != ch) {
			t.Fatalf("CheckXML ok with %+v but ReadHeader = %+v, %v", ch, h, err)
		}
		if err != nil && cerr != nil && err.Error() != cerr.Error() {
			t.Fatalf("ReadHeader and CheckXML disagree: %v / %v", err, cerr)
		}
	})
}

func FuzzParseName(f *testing.F) {
	for _, s := range []string{"Message_CO_SHOP1.xml", "Message_ЦО_ОП.ZIP", "Message_P_A_B.zip", "Message_A.xml",
		"../Message_A_B.xml", "Message_A_B_C_D.xml", "message_a_b.xml", "Message_A_B.xml\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseName(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), ErrBadName.Error()) {
				t.Fatalf("error does not wrap ErrBadName: %v", err)
			}
			oneLineErr(t, "ParseName", err)
			return
		}
		if !strings.EqualFold(n.String(), s) || !strings.HasPrefix(s, n.String()[:len(n.String())-4]) {
			t.Fatalf("%q.String() = %q", s, n.String())
		}
		n2, err := ParseName(n.String())
		if err != nil || n2 != n {
			t.Fatalf("round trip of %q: %+v, %v; want %+v", s, n2, err, n)
		}
		if n.From == "" || n.To == "" || strings.ContainsAny(n.String(), `/\`) {
			t.Fatalf("bad parse %+v", n)
		}
		// A sealed zip is routed by the reading its pickup took it by: that
		// reading must be the node's and agree with the name, or the file
		// is a dead letter for a mismatch it does not have.
		all := n.readings(nil)
		var codes []string
		for _, r := range all {
			if r.Check(Header{From: r.From, To: r.To}) != nil || n.Check(Header{From: r.From, To: r.To}) != nil {
				t.Fatalf("%q: reading %+v disagrees with the name", s, r)
			}
			if len(codes) < 40 { // enough: a 16-part name has ~120 readings
				codes = append(codes, r.From, r.To)
			}
		}
		last := all[len(all)-1] // some reading's two codes as the nodes
		for _, isNode := range []func(string) bool{nil, func(c string) bool { return c == last.From || c == last.To }} {
			for _, node := range append(codes, "") {
				read := n.ReadBy(node, isNode)
				if err := n.Check(read.Sealed()); err != nil {
					t.Fatalf("%q read by %q: %+v disagrees with the name: %v", s, node, read, err)
				}
				if node != "" && n.MayBeFrom(node, isNode) && read.From != node {
					t.Fatalf("%q may be from %q, yet read as %+v", s, node, read)
				}
			}
		}
	})
}
