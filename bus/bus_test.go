package bus

import (
	"strings"
	"testing"
)

func TestToken(t *testing.T) {
	cases := map[string]string{
		"SHOP1":      "SHOP1",
		"ЦО":         "=D0=A6=D0=9E",
		"a.b":        "a=2Eb",
		"x*>":        "x=2A=3E",
		"with space": "with=20space",
		"=":          "=3D",
		"":           "=",
	}
	for in, want := range cases {
		if got := Token(in); got != want {
			t.Errorf("Token(%q) = %q, want %q", in, got, want)
		}
		back, err := Untoken(Token(in))
		if err != nil || back != in {
			t.Errorf("Untoken(Token(%q)) = %q, %v", in, back, err)
		}
	}
	if got := Subject("Магазины", "ЦО", "ОП"); strings.Count(got, ".") != 4 {
		t.Errorf("Subject has %d dots: %q", strings.Count(got, "."), got)
	}
	for _, bad := range []string{"=", "=4", "=ZZ", "a=1"} {
		if bad == "=" {
			continue
		}
		if _, err := Untoken(bad); err == nil {
			t.Errorf("Untoken(%q) accepted a broken escape", bad)
		}
	}
}

// FuzzToken: any code becomes one valid subject token, KV key and consumer
// name, and decodes back to itself.
func FuzzToken(f *testing.F) {
	for _, s := range []string{"ЦО", "SHOP1", "a.b*c>d", " ", "=3D", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok := Token(s)
		for i := 0; i < len(tok); i++ {
			c := tok[i]
			if !(c == '_' || c == '-' || c == '=' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
				t.Fatalf("Token(%q) = %q has byte %q", s, tok, c)
			}
		}
		back, err := Untoken(tok)
		if err != nil || back != s {
			t.Fatalf("round trip of %q: %q, %v", s, back, err)
		}
	})
}
