package exchange

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fixturesDir holds the sample messages (a copy of the design's shared/fixtures), seen from the package directory.
const fixturesDir = "../testdata/fixtures"

// fixtures returns the fixture files of kind "good" or "bad" by base name,
// skipping the test only when the fixtures directory itself is missing.
func fixtures(t testing.TB, kind string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(fixturesDir, kind))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(fixturesDir, kind, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	if len(out) == 0 {
		t.Fatalf("no fixtures in %s/%s", fixturesDir, kind)
	}
	return out
}

// wantErr fails unless err wraps want and reads as one line.
func wantErr(t testing.TB, what string, err, want error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: got success, want %v", what, want)
		return
	}
	if !errors.Is(err, want) {
		t.Errorf("%s: got %v, want %v", what, err, want)
	}
	oneLineErr(t, what, err)
}

func oneLineErr(t testing.TB, what string, err error) {
	t.Helper()
	if err != nil && strings.ContainsAny(err.Error(), "\r\n") {
		t.Errorf("%s: error is not one line: %q", what, err.Error())
	}
}

// v8msg builds a platform message with the given header elements (inside
// v8msg:Header) and body content.
func v8msg(header, body string) string {
	return "\ufeff<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" +
		`<v8msg:Message xmlns:v8msg="http://v8.1c.ru/messages">` + "\n" +
		"<v8msg:Header>" + header + "</v8msg:Header>\n" +
		"<v8msg:Body>" + body + "</v8msg:Body>\n</v8msg:Message>\n"
}

// v8fields is a typical header: plan Stores, CO -> SHOP1, No 5, received 2.
const v8fields = `<v8msg:ExchangePlan>Stores</v8msg:ExchangePlan><v8msg:To>SHOP1</v8msg:To>` +
	`<v8msg:From>CO</v8msg:From><v8msg:MessageNo>5</v8msg:MessageNo><v8msg:ReceivedNo>2</v8msg:ReceivedNo>`

// v8with is v8fields with MessageNo set to no.
func v8with(no string) string {
	return strings.Replace(v8fields, "<v8msg:MessageNo>5<", "<v8msg:MessageNo>"+no+"<", 1)
}

const smallBody = `<d:Data xmlns:d="http://v8.1c.ru/dataexchange"><d:Item a="1">x &amp; y</d:Item><d:Empty/></d:Data>`

func statFixtures() (os.FileInfo, error) { return os.Stat(fixturesDir) }
