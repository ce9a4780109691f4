package api

import (
	"bytes"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/relay1c/relay/config"
)

// TestPushExtensionMustMatchContent: the file name's extension is part of
// the name the message travels under (deliveries write it, the http
// delivery sends Content-Type by it), so a zip pushed as Message_CO_SHOP1.xml
// (or an XML as .zip) is refused like any other name that contradicts the
// file, and nothing stays in the spool.
func TestPushExtensionMustMatchContent(t *testing.T) {
	data := t.TempDir()
	cfg, err := config.Parse([]byte("relay: { data_dir: " + data + " }\nnodes:\n  CO:\n    pickup: { dir: a }\n  SHOP1:\n    deliver: { dir: b }\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(cfg, &fakeBackend{ready: true}, "", slog.New(slog.DiscardHandler))
	for _, c := range []struct {
		fixture, name string
		code          int
	}{
		{"Message_CO_SHOP1.zip", "Message_CO_SHOP1.zip", 202},
		{"Message_CO_SHOP1.xml", "Message_CO_SHOP1.xml", 202},
		{"Message_CO_SHOP1.zip", "Message_CO_SHOP1.xml", 400},
		{"Message_CO_SHOP1.xml", "Message_CO_SHOP1.zip", 400},
	} {
		body, err := os.ReadFile(filepath.Join("../testdata/fixtures/good", c.fixture))
		if err != nil {
			t.Fatal(err)
		}
		r := httptest.NewRequest("POST", "http://127.0.0.1:8088/api/v1/messages?name="+c.name, bytes.NewReader(body))
		r.RemoteAddr = "127.0.0.1:5000"
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code != c.code {
			t.Errorf("%s pushed as %s: %d %s, want %d", c.fixture, c.name, w.Code, w.Body, c.code)
		}
	}
	// Pushed without a name, a zip is named .zip by its content whatever
	// zip signature it starts with; here the marker of a zip written for
	// spanning, "PK\x07\x08", in front of the good fixture.
	body, err := os.ReadFile("../testdata/fixtures/good/Message_CO_SHOP1.zip")
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("POST", "http://127.0.0.1:8088/api/v1/messages", bytes.NewReader(append([]byte("PK\x07\x08"), body...)))
	r.RemoteAddr = "127.0.0.1:5000"
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	if w.Code != 202 {
		t.Errorf("zip starting with the spanning marker, pushed without a name: %d %s, want 202", w.Code, w.Body)
	}
	left, _ := filepath.Glob(filepath.Join(data, "spool", "api", "*"))
	if len(left) > 0 {
		t.Errorf("spool files left behind: %v", left)
	}
}

// When relay cannot spool a good upload (disk full, spool folder
// unusable: here a file stands where it should be) the file was not stored
// for relay's own reasons and may be sent again: 503, not 400 ("a bad file,
// the sender's to fix", which makes a sender give up on a good message).
func TestPushSpoolFailureIs503(t *testing.T) {
	data := t.TempDir()
	cfg, err := config.Parse([]byte("relay: { data_dir: " + data + " }\nnodes:\n  CO:\n    pickup: { dir: a }\n  SHOP1:\n    deliver: { dir: b }\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(cfg, &fakeBackend{ready: true}, "", slog.New(slog.DiscardHandler))
	// The spool folder becomes unusable (here: a file stands where it
	// should be; the same path as ENOSPC or EACCES).
	spool := filepath.Join(data, "spool", "api")
	if err := os.RemoveAll(spool); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(spool), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(spool, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	body, err := os.ReadFile("../testdata/fixtures/good/Message_CO_SHOP1.xml")
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("POST", "http://127.0.0.1:8088/api/v1/messages?name=Message_CO_SHOP1.xml", bytes.NewReader(body))
	r.RemoteAddr = "127.0.0.1:5000"
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	if w.Code != 503 {
		t.Fatalf("good file, relay cannot spool it: %d %s, want 503 (not stored, send again)", w.Code, w.Body)
	}
}
