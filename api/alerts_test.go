package api

import (
	"strings"
	"testing"
	"time"

	"github.com/relay1c/relay/pipeline"
)

func TestAlerts(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	for _, c := range []struct {
		name string
		ch   pipeline.Channel
		want []string
	}{
		{"all acknowledged", pipeline.Channel{DeliveredNo: 5, AckedNo: 5, LastDeliveredAt: now.Add(-48 * time.Hour)}, nil},
		{"waiting, not yet overdue", pipeline.Channel{DeliveredNo: 5, AckedNo: 4, LastDeliveredAt: now.Add(-23 * time.Hour)}, nil},
		{"overdue", pipeline.Channel{DeliveredNo: 5, AckedNo: 4, LastDeliveredAt: now.Add(-26 * time.Hour)}, []string{"no acknowledgement for 26h0m0s: delivered up to No 5, acknowledged No 4"}},
		{"restored from backup", pipeline.Channel{DeliveredNo: 5, AckedNo: 9, Warning: "A acknowledged No 9 ... restored from a backup"}, []string{"restored from a backup"}},
		{"held on a gap", pipeline.Channel{PickedNo: 7, DeliveredNo: 5, Queued: 2, LastError: "gap: holding No 7 until No 6 arrives"}, []string{"gap: holding No 7"}},
		{"gap resolved", pipeline.Channel{PickedNo: 7, DeliveredNo: 7, Queued: 2, Resolved: 2, LastError: "gap: holding No 7 until No 6 arrives"}, nil},
	} {
		got := alerts(c.ch, day, now)
		if len(got) != len(c.want) {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
			continue
		}
		for i := range got {
			if !strings.Contains(got[i], c.want[i]) {
				t.Errorf("%s: %q, want %q", c.name, got[i], c.want[i])
			}
		}
	}
}
