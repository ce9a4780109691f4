package adapters

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// TestPickupReadsWithMaxXMLToken: relay.max_xml_token reaches the pickup
// the registry builds. 1C writes a file it keeps in the infobase as one
// base64 text, and one over the limit made the whole message a dead letter
// with no way to raise it (found by review: 64 MiB, fixed): the same 2 MiB
// text run is refused under max_xml_token 1MiB, naming the setting, and
// taken under the default.
func TestPickupReadsWithMaxXMLToken(t *testing.T) {
	for _, tc := range []struct {
		name, relay, problem string
	}{
		{"default", "", ""},
		{"1MiB", "relay: { max_xml_token: 1MiB }\n", "relay.max_xml_token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := t.TempDir()
			cfg, err := config.Parse([]byte(tc.relay + "nodes:\n  ЦО:\n    pickup: { dir: { path: '" + out + "', settle: 10ms, poll_interval: 100ms } }\n  ОП:\n    deliver: { dir: ./in }\n"))
			if err != nil {
				t.Fatal(err)
			}
			doc := "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<v8msg:Message xmlns:v8msg=\"http://v8.1c.ru/messages\"><v8msg:Header>" +
				"<v8msg:ExchangePlan>Полный</v8msg:ExchangePlan><v8msg:To>ОП</v8msg:To><v8msg:From>ЦО</v8msg:From>" +
				"<v8msg:MessageNo>3</v8msg:MessageNo><v8msg:ReceivedNo>2</v8msg:ReceivedNo></v8msg:Header>" +
				"<v8msg:Body><ХранилищеФайла>" + strings.Repeat("QUJD", 512<<10) + "</ХранилищеФайла></v8msg:Body></v8msg:Message>\n"
			if err := os.WriteFile(filepath.Join(out, "Message_ЦО_ОП.xml"), []byte(doc), 0o644); err != nil {
				t.Fatal(err)
			}
			sub, err := New(cfg).Pickup("ЦО", cfg.Nodes["ЦО"].Pickup, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ch, err := sub.Subscribe(ctx, "")
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			var m *message.Message
			select {
			case m = <-ch:
			case <-time.After(10 * time.Second):
				t.Fatal("nothing picked up")
			}
			defer m.Nack() // left in place
			got := m.Metadata.Get(exchange.MetaProblem)
			if tc.problem == "" && got != "" || tc.problem != "" && !strings.Contains(got, tc.problem) {
				t.Errorf("problem %q, want one naming %q", got, tc.problem)
			}
		})
	}
}
