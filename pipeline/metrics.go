package pipeline

import (
	"context"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/relay1c/relay/exchange"
)

// metaPickedAt, set at ingest, is when the message was taken in (Unix
// nanoseconds): the start of the delivery latency.
const metaPickedAt = "Relay-Picked-At"

// metrics are the pipeline's Prometheus metrics, on a registry of its own
// (no global state: two relays in one process, as in the tests, do not mix).
type metrics struct {
	reg                       *prometheus.Registry
	picked, pickedBytes       *prometheus.CounterVec
	delivered, deliveredBytes *prometheus.CounterVec
	dead, dropped             *prometheus.CounterVec
	attempts, attemptErrors   *prometheus.CounterVec
	fetched                   *prometheus.CounterVec
	latency                   *prometheus.HistogramVec
}

func newMetrics(p *Pipeline) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "relay", Name: name, Help: help}, labels)
		m.reg.MustRegister(c)
		return c
	}
	m.picked = counter("messages_picked_up_total", "Messages taken into JetStream from a node's pickup (or pushed through the API, adapter \"api\").", "node", "adapter")
	m.pickedBytes = counter("bytes_picked_up_total", "Payload bytes taken into JetStream.", "node", "adapter")
	m.delivered = counter("messages_delivered_total", "Messages the destination holds completely.", "node", "adapter")
	m.deliveredBytes = counter("bytes_delivered_total", "Payload bytes delivered.", "node", "adapter")
	m.dead = counter("messages_dead_total", "Messages put into dead letters, by the node they concern and the stage (pickup, route, deliver).", "node", "stage")
	m.dropped = counter("messages_dropped_total", "Valid messages not delivered on purpose, by destination node and reason (duplicate, stale, superseded).", "node", "reason")
	m.attempts = counter("delivery_attempts_total", "Deliveries tried by a node's delivery adapter (holds not counted).", "node", "adapter")
	m.attemptErrors = counter("delivery_errors_total", "Delivery attempts that failed (retried later, or dead-lettered).", "node", "adapter")
	m.fetched = counter("messages_fetched_total", "Messages for a node this relay serves moved here from another relay's JetStream domain (an office, the head office).", "node", "relay")
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "relay", Name: "delivery_latency_seconds",
		Help:    "Time from pickup (JetStream holds the message) to delivery (the destination holds it).",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600},
	}, []string{"node"})
	m.reg.MustRegister(m.latency, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), stateCollector{p})
	return m
}

// Gatherer is what /metrics serves.
func (p *Pipeline) Gatherer() prometheus.Gatherer { return p.metrics.reg }

// adapterOf names the endpoint kind of a node's pickup or delivery.
func (p *Pipeline) adapterOf(node, role string) string {
	n := p.cfg.Nodes[node]
	switch {
	case n == nil:
		return ""
	case role == "pickup" && n.Pickup != nil:
		return n.Pickup.Kind
	case role == "deliver" && n.Deliver != nil:
		return n.Deliver.Kind
	}
	return ""
}

// observeLatency records pickup → delivery of a record.
func (m *metrics) observeLatency(node string, rec map[string]string) {
	ns, err := strconv.ParseInt(rec[metaPickedAt], 10, 64)
	if err != nil || ns <= 0 {
		return
	}
	m.latency.WithLabelValues(node).Observe(time.Since(time.Unix(0, ns)).Seconds())
}

// stateCollector turns channel state and endpoint health into gauges at
// scrape time, so they are exactly what `relay status` shows.
type stateCollector struct{ p *Pipeline }

var (
	descPending = prometheus.NewDesc("relay_channel_pending", "Messages of the channel taken in and not yet finished.", []string{"plan", "from", "to"}, nil)
	descNo      = prometheus.NewDesc("relay_channel_message_no", "The channel's last picked-up, delivered and acknowledged MessageNo.", []string{"plan", "from", "to", "kind"}, nil)
	descAckLag  = prometheus.NewDesc("relay_channel_ack_lag_seconds", "How long the channel's newest delivery has waited for its acknowledgement (a ReceivedNo on the reverse channel); 0 when everything delivered is acknowledged.", []string{"plan", "from", "to"}, nil)
	descUp      = prometheus.NewDesc("relay_endpoint_up", "1 when the endpoint's last attempt (connect, list, deliver) worked, 0 while it is failing.", []string{"node", "role", "adapter"}, nil)
)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descPending
	ch <- descNo
	ch <- descAckLag
	ch <- descUp
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if chans, err := c.p.states.List(ctx); err == nil {
		now := time.Now()
		for _, s := range chans {
			l := []string{s.Plan, s.From, s.To}
			ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(s.Pending()), l...)
			for kind, no := range map[string]uint64{"picked": s.PickedNo, "delivered": s.DeliveredNo, "acknowledged": s.AckedNo} {
				ch <- prometheus.MustNewConstMetric(descNo, prometheus.GaugeValue, float64(no), s.Plan, s.From, s.To, kind)
			}
			lag := 0.0
			if s.AckedNo < s.DeliveredNo && !s.LastDeliveredAt.IsZero() {
				lag = now.Sub(s.LastDeliveredAt).Seconds()
			}
			ch <- prometheus.MustNewConstMetric(descAckLag, prometheus.GaugeValue, lag, l...)
		}
	}
	for node, e := range c.p.health {
		for _, ep := range []struct {
			role string
			r    errorReporter
		}{{"pickup", e.pickup}, {"deliver", e.deliver}} {
			if ep.r == nil {
				continue
			}
			up := 1.0
			if msg, _ := ep.r.LastError(); msg != "" {
				up = 0
			}
			ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, node, ep.role, c.p.adapterOf(node, ep.role))
		}
	}
}

// payloadSize is a record's payload size from its metadata (0 if unreadable).
func payloadSize(md map[string]string) float64 {
	n, _ := strconv.ParseInt(md[exchange.MetaSize], 10, 64)
	return float64(n)
}
