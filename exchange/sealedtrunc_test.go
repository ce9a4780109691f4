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
// least end where the central directory starts.
func TestSealedZipTruncatedEntry(t *testing.T) {
	for name, z := range cryptFiles(t) {
		fh, raw := rawEntry(t, z)                // fh keeps the full CompressedSize64
		cut := writeRaw(t, fh, raw[:len(raw)/2]) // the entry's second half never made it
		if _, err := InspectWith(bytes.NewReader(cut), int64(len(cut)), Limits{}, []string{cryptPassword}); err == nil {
			t.Fatalf("%s: with the password the cut entry reads?", name)
		}
		n, _ := ParseName("Message_ЦО_ОП.zip")
		info, err := InspectFile(bytes.NewReader(cut), int64(len(cut)), Limits{}, n, n.Sealed(), nil)
		if err == nil {
			t.Errorf("%s with half its entry missing (%d of %d stored bytes): taken as a complete sealed zip: %+v", name, len(raw)/2, len(raw), info.Header)
		}
	}
}
