package projections

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ledgermail/ledgermail/events"
)

// Metrics is the Prometheus read model: counters folded from events, the
// queue gauge read from the Queue projection, and latency histograms.
type Metrics struct {
	Registry *prometheus.Registry

	accepted  prometheus.Counter
	rejected  *prometheus.CounterVec
	delivered prometheus.Counter
	deferred  prometheus.Counter
	bounced   prometheus.Counter
	expired   prometheus.Counter
	appendSec prometheus.Histogram
	relaySec  *prometheus.HistogramVec
	tlsResult *prometheus.CounterVec
}

// NewMetrics registers every ledgermail_ metric; the queue gauge reads q.
func NewMetrics(q *Queue) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry:  reg,
		accepted:  prometheus.NewCounter(prometheus.CounterOpts{Name: "ledgermail_messages_accepted_total", Help: "Messages accepted (Received events), since start."}),
		rejected:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ledgermail_messages_rejected_total", Help: "SMTP commands refused, by reason."}, []string{"reason"}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "ledgermail_messages_delivered_total", Help: "Delivered events (recipients accepted by the next hop)."}),
		deferred:  prometheus.NewCounter(prometheus.CounterOpts{Name: "ledgermail_messages_deferred_total", Help: "Deferred events."}),
		bounced:   prometheus.NewCounter(prometheus.CounterOpts{Name: "ledgermail_messages_bounced_total", Help: "Bounced events."}),
		expired:   prometheus.NewCounter(prometheus.CounterOpts{Name: "ledgermail_messages_expired_total", Help: "Expired events."}),
		appendSec: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ledgermail_journal_append_seconds", Help: "Time of one group commit (batch write and fsync).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		relaySec: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ledgermail_relay_seconds", Help: "Time of one delivery attempt, by recipient domain.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}, []string{"domain"}),
		tlsResult: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ledgermail_tls_policy_results_total",
			Help: "Delivery attempts under a transport security policy (mta-sts or dane), by recipient domain, policy, MTA-STS mode and result (success or a TLS-RPT result type)."},
			[]string{"domain", "policy", "mode", "result"}),
	}
	states := []State{StateReceived, StateQueued, StateActive, StateDeferred}
	for _, st := range states {
		st := st
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ledgermail_queue_envelopes", Help: "Live envelopes in the queue, by state.", ConstLabels: prometheus.Labels{"state": string(st)},
		}, func() float64 { return float64(q.Count(st)) }))
	}
	reg.MustRegister(m.accepted, m.rejected, m.delivered, m.deferred, m.bounced, m.expired, m.appendSec, m.relaySec, m.tlsResult,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// Apply counts committed events (a journal subscriber).
func (m *Metrics) Apply(evs []events.Event) {
	for _, e := range evs {
		switch p := e.Payload.(type) {
		case events.Received:
			if p.Listener != events.ListenerLocal {
				m.accepted.Inc()
			}
		case events.Delivered:
			m.delivered.Inc()
		case events.Deferred:
			m.deferred.Inc()
		case events.Bounced:
			m.bounced.Inc()
		case events.Expired:
			m.expired.Inc()
		case events.Attempted:
			domain := "unknown"
			if len(p.Results) > 0 {
				if i := strings.LastIndexByte(p.Results[0].Recipient, '@'); i >= 0 {
					domain = strings.ToLower(p.Results[0].Recipient[i+1:])
				}
			}
			m.relaySec.WithLabelValues(domain).Observe(p.Seconds)
			if p.TLSPolicy != "" {
				m.tlsResult.WithLabelValues(domain, p.TLSPolicy, p.STSMode, p.TLSResult).Inc()
			}
		}
	}
}

// Rejected counts a refused command.
func (m *Metrics) Rejected(reason string) { m.rejected.WithLabelValues(reason).Inc() }

// Commit observes one journal group commit.
func (m *Metrics) Commit(d time.Duration, _ int) { m.appendSec.Observe(d.Seconds()) }
