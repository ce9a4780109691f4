package exchange

import (
	"bytes"
	"testing"
)

// TestSealedZipTruncatedEntry: a password-protected zip routed by its
// name (no password configured) is only checked as a container, but the
// check did not even make sure the entry's stored bytes are in the file:
// a zip whose entry was cut short (half its bytes missing) but whose central
// directory reads was taken as complete and carried to the addressee, which
// cannot unpack it. The stored bytes (local header + CompressedSize) must at
// least end where the central directory starts — also when the directory
// claims a zip64 size near 2^64 (found by review: the sum wrapped and
// passed).
func TestSealedZipTruncatedEntry(t *testing.T) {
	for name, z := range cryptFiles(t) {
		fh, raw := rawEntry(t, z)                // fh keeps the full CompressedSize64
		cut := writeRaw(t, fh, raw[:len(raw)/2]) // the entry's second half never made it
		if _, err := InspectWith(bytes.NewReader(cut), int64(len(cut)), Limits{}, []string{cryptPassword}); err == nil {
			t.Fatalf("%s: with the password the cut entry reads?", name)
		}
		fh.CompressedSize64 = 1<<64 - 1<<10
		huge := writeRaw(t, fh, raw)
		n, _ := ParseName("Message_ЦО_ОП.zip")
		for what, bad := range map[string][]byte{"half its entry missing": cut, "a size near 2^64": huge} {
			info, err := InspectFile(bytes.NewReader(bad), int64(len(bad)), Limits{}, n, n.Sealed(), nil)
			if err == nil {
				t.Errorf("%s with %s (%d stored bytes in the file): taken as a complete sealed zip: %+v", name, what, len(raw), info.Header)
			}
		}
	}
}
