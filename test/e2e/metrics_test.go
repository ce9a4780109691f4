package e2e

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/relay1c/relay/api"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/pipeline"
)

// scrape reads /metrics into sample values keyed by name{label="v",...}
// (labels sorted as the exposition writes them).
func scrape(t testing.TB, s *site) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + s.listen + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			key := name + "{" + strings.Join(ls, ",") + "}"
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[name+"_count{"+strings.Join(ls, ",")+"}"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// TestMetricsAgree: after a mixed run — good messages, a junk file, a
// message for an unknown node, a destination that fails — /metrics says
// what happened, and the same as the channel state.
func TestMetricsAgree(t *testing.T) {
	s := newSite(t, nodeSpec{code: "A"}, nodeSpec{code: "B"}, nodeSpec{code: "C"})
	s.start(t)
	// C's inbox breaks: a file where the folder should be.
	if err := os.RemoveAll(s.in("C")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.in("C"), []byte("not a folder"), 0o644); err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(s.out("A"), name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	toB := exchange.FileName("A", "B", exchange.FormatXML)
	var third []byte
	for no := uint64(1); no <= 3; no++ {
		third = fxXML(t, header("A", "B", no, 0), 2000)
		write(toB, third)
		if !fxAwait(10*time.Second, func() bool { return readNo(filepath.Join(s.in("B"), toB)) == no }) {
			t.Fatalf("A→B No %d not delivered", no)
		}
	}
	write(exchange.FileName("A", "C", exchange.FormatXML), fxXML(t, header("A", "C", 1, 0), 2000))
	write(exchange.FileName("A", "NOPE", exchange.FormatXML), fxXML(t, header("A", "NOPE", 1, 0), 2000))
	write("Message_A_B.zip", []byte("not a zip at all"))

	want := map[string]float64{
		`relay_messages_picked_up_total{adapter=dir,node=A}`:                 4, // 3 to B, 1 to C
		`relay_messages_delivered_total{adapter=dir,node=B}`:                 3,
		`relay_delivery_latency_seconds_count{node=B}`:                       3,
		`relay_messages_dead_total{node=A,stage=pickup}`:                     1,
		`relay_messages_dead_total{node=NOPE,stage=route}`:                   1,
		`relay_endpoint_up{adapter=dir,node=C,role=deliver}`:                 0,
		`relay_endpoint_up{adapter=dir,node=B,role=deliver}`:                 1,
		`relay_endpoint_up{adapter=dir,node=A,role=pickup}`:                  1,
		`relay_channel_pending{from=A,plan=Магазины,to=C}`:                   1,
		`relay_channel_message_no{from=A,kind=delivered,plan=Магазины,to=B}`: 3,
	}
	var got map[string]float64
	if !fxAwait(20*time.Second, func() bool {
		got = scrape(t, s)
		for k, v := range want {
			if got[k] != v {
				return false
			}
		}
		return got[`relay_delivery_errors_total{adapter=dir,node=C}`] >= 1
	}) {
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s = %v, want %v", k, got[k], v)
			}
		}
		t.Errorf("delivery errors of C: %v", got[`relay_delivery_errors_total{adapter=dir,node=C}`])
		t.FailNow()
	}
	// The channel state says the same.
	if c := channel(t, s, "A", "B"); float64(c.DeliveredNo) != got[`relay_channel_message_no{from=A,kind=delivered,plan=Магазины,to=B}`] {
		t.Errorf("status %+v disagrees with metrics", c)
	}
	if c := channel(t, s, "A", "C"); c.Pending != 1 || c.LastError == "" {
		t.Errorf("A→C: %+v", c)
	}
	dead := fxDead(t, s)
	if len(dead) != 2 {
		t.Fatalf("dead letters %+v, want 2 as the metrics say", dead)
	}

	// B answers with ReceivedNo 3: the trace of A→B No 3 shows every step
	// and the acknowledgement.
	back := fxXML(t, header("B", "A", 1, 3), 1000)
	if err := os.WriteFile(filepath.Join(s.out("B"), exchange.FileName("B", "A", exchange.FormatXML)), back, 0o644); err != nil {
		t.Fatal(err)
	}
	id := pipeline.MessageID(header("A", "B", 3, 0), fxSum(third))
	var evs []pipeline.Event
	steps := func() string {
		var ss []string
		for _, e := range evs {
			ss = append(ss, e.Step)
		}
		return strings.Join(ss, ",")
	}
	if !fxAwait(15*time.Second, func() bool {
		evs, _ = api.NewClient(s.listen, "").Trace(context.Background(), id)
		return steps() == "picked_up,delivered,acknowledged"
	}) {
		t.Errorf("trace of %s: %s, want picked_up,delivered,acknowledged: %+v", id, steps(), evs)
	}
	if evs, _ = api.NewClient(s.listen, "").Trace(context.Background(), "Message_A_C.xml"); !strings.HasPrefix(steps(), "picked_up,delivery_failed") {
		t.Errorf("trace of Message_A_C.xml: %s", steps())
	}
	if evs, _ = api.NewClient(s.listen, "").Trace(context.Background(), "Message_A_B.zip"); steps() != "dead" {
		t.Errorf("trace of the junk file: %s", steps())
	}

	// The CLI shows the same: `relay status C` has only C's channel and its
	// failing endpoint; `relay dead show` the whole letter.
	bin := buildRelay(t)
	out, err := exec.Command(bin, "status", "-c", s.cfg, "C").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "A → C") || strings.Contains(string(out), "A → B") ||
		!strings.Contains(string(out), "node C deliver: dir C: create temp") {
		t.Errorf("relay status C: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "status", "-c", s.cfg, "NOPE").CombinedOutput(); err == nil {
		t.Errorf("relay status of an unknown node succeeded:\n%s", out)
	}
	if out, err := exec.Command(bin, "trace", "-c", s.cfg, id).CombinedOutput(); err != nil || !strings.Contains(string(out), "acknowledged") || !strings.Contains(string(out), "picked_up") {
		t.Errorf("relay trace: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "dead", "show", "-c", s.cfg, strconv.FormatUint(dead[0].Seq, 10)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "reason") || !strings.Contains(string(out), dead[0].Reason) {
		t.Errorf("relay dead show: %v\n%s", err, out)
	}
}
