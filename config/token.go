package config

import "fmt"

// Token encodes a node code or plan name as one NATS subject token that is
// also a valid consumer name and KV key: [A-Za-z0-9_-] stay, every other byte
// becomes =XX (hex); empty is "=". The encoding is injective, so tokens never
// collide. bus.Token is this function; it lives here so that Problems
// measures the NATS names a node code makes with the encoding itself.
func Token(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '_' || c == '-' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') {
			b = append(b, c)
			continue
		}
		b = fmt.Appendf(b, "=%02X", c)
	}
	if len(b) == 0 {
		return "="
	}
	return string(b)
}
