package exchangetest

import (
	"context"
	"io"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/relay1c/relay/exchange"
)

// Body reads the whole body of message m, as the pipeline would, failing
// the test if it does not read.
func Body(t testing.TB, m *message.Message) []byte {
	t.Helper()
	r, err := exchange.Body(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
