package actors

import (
	"time"

	"golang.org/x/time/rate"
)

// readyQueues holds the envelopes that are due, one FIFO per destination
// (Postfix's per-destination queues), and hands them out round robin,
// skipping destinations that have no free connection. Envelopes that do
// not deliver (a root envelope's policy step) use the "" lane, bounded
// only by the supervisor's MaxActive. It is owned by the supervisor actor.
type readyQueues struct {
	byKey    map[string][]string
	ring     []string // destinations with something ready, in turn order
	cursor   int
	inflight map[string]int // envelope actors running per destination
	limit    int            // per destination; the "" lane has none
	n        int            // envelopes waiting, all lanes
	// Per-destination shaping: a connection limit and a rate budget.
	shape    func(key string) Shaping
	limiters map[string]*rate.Limiter
	wait     time.Duration // after next found nothing: when a budget refills (0: none)
}

// Shaping is a destination's traffic shaping ([[relay.destinations]]).
type Shaping struct {
	MaxConnections int        // 0: MaxConnectionsPerDomain
	Rate           rate.Limit // messages per second; 0: unlimited
	// MaxMessagesPerConnection closes a connection after this many
	// transactions (the next message opens a new one); 0: no limit.
	MaxMessagesPerConnection int
}

func newReadyQueues(limit int) *readyQueues {
	return &readyQueues{byKey: map[string][]string{}, inflight: map[string]int{}, limit: limit,
		shape: func(string) Shaping { return Shaping{} }, limiters: map[string]*rate.Limiter{}}
}

// allowed reports whether key may start one more delivery now: a free
// connection, and a token of its rate budget (taken). When the budget is
// what stops it, r.wait learns how long until it refills.
func (r *readyQueues) allowed(key string) bool {
	s := r.shape(key)
	if r.inflight[key] >= r.connLimit(s) {
		return false
	}
	if s.Rate <= 0 {
		return true
	}
	lim := r.limiters[key]
	if lim == nil {
		lim = rate.NewLimiter(s.Rate, 1)
		r.limiters[key] = lim
	}
	if lim.Allow() {
		return true
	}
	res := lim.Reserve()
	d := res.Delay()
	res.Cancel()
	if r.wait == 0 || d < r.wait {
		r.wait = d
	}
	return false
}

func (r *readyQueues) push(key, id string) {
	q, ok := r.byKey[key]
	if !ok {
		r.ring = append(r.ring, key)
	}
	r.byKey[key] = append(q, id)
	r.n++
}

func (r *readyQueues) len() int { return r.n }

// next returns the next envelope whose destination has a free connection,
// taking destinations in turn; ok is false when none can start now.
func (r *readyQueues) next() (key, id string, ok bool) {
	r.wait = 0
	for tried := 0; tried < len(r.ring); tried++ {
		if r.cursor >= len(r.ring) {
			r.cursor = 0
		}
		key = r.ring[r.cursor]
		if key != "" && !r.allowed(key) {
			r.cursor++
			continue
		}
		q := r.byKey[key]
		id, q = q[0], q[1:]
		r.n--
		if len(q) == 0 {
			delete(r.byKey, key)
			r.ring = append(r.ring[:r.cursor], r.ring[r.cursor+1:]...)
		} else {
			r.byKey[key] = q
			r.cursor++
		}
		return key, id, true
	}
	return "", "", false
}

// remove takes id out of whichever lane holds it; it reports whether one
// did.
func (r *readyQueues) remove(id string) bool {
	for key, q := range r.byKey {
		for i, x := range q {
			if x != id {
				continue
			}
			q = append(q[:i:i], q[i+1:]...)
			r.n--
			if len(q) > 0 {
				r.byKey[key] = q
				return true
			}
			delete(r.byKey, key)
			for j, k := range r.ring {
				if k == key {
					r.ring = append(r.ring[:j], r.ring[j+1:]...)
					if r.cursor > j {
						r.cursor--
					}
					break
				}
			}
			return true
		}
	}
	return false
}

// started and done count the envelope actors running for key.
func (r *readyQueues) started(key string) { r.inflight[key]++ }

func (r *readyQueues) done(key string) {
	if r.inflight[key]--; r.inflight[key] <= 0 {
		delete(r.inflight, key)
	}
}

// drain removes every waiting envelope (shutdown) and returns how many.
func (r *readyQueues) drain() int {
	n := r.n
	r.byKey, r.ring, r.cursor, r.n = map[string][]string{}, nil, 0, 0
	return n
}

// held returns the envelopes waiting for their destination's budget (a
// free connection, a rate token), with which: what `mta queue` shows as
// held rather than deferred.
func (r *readyQueues) held() map[string]string {
	out := map[string]string{}
	for key, ids := range r.byKey {
		if key == "" {
			continue
		}
		why := r.blocked(key)
		if why == "" {
			continue
		}
		for _, id := range ids {
			out[id] = why
		}
	}
	return out
}

// blocked says what keeps key from starting a delivery now ("" when
// nothing does), without taking a token.
func (r *readyQueues) blocked(key string) string {
	s := r.shape(key)
	if r.inflight[key] >= r.connLimit(s) {
		return "connections"
	}
	if lim := r.limiters[key]; s.Rate > 0 && lim != nil && lim.Tokens() < 1 {
		return "rate"
	}
	return ""
}

// connLimit is a destination's connection limit: its own, else the
// per-domain default.
func (r *readyQueues) connLimit(s Shaping) int {
	if s.MaxConnections > 0 {
		return s.MaxConnections
	}
	return r.limit
}

// DestinationState is the scheduler's view of one destination now.
type DestinationState struct {
	InFlight int     // deliveries running (each holds one connection)
	Limit    int     // the connection limit
	Rate     float64 // messages per second; 0: unlimited
	Tokens   float64 // what is left of the rate budget (rate-limited only)
}

// states reports every destination with deliveries running or a rate
// budget in use.
func (r *readyQueues) states() map[string]DestinationState {
	out := map[string]DestinationState{}
	add := func(key string) {
		if key == "" {
			return
		}
		s := r.shape(key)
		st := DestinationState{InFlight: r.inflight[key], Limit: r.connLimit(s), Rate: float64(s.Rate)}
		if lim := r.limiters[key]; lim != nil && s.Rate > 0 {
			st.Tokens = lim.Tokens()
		}
		out[key] = st
	}
	for key, n := range r.inflight {
		if n > 0 {
			add(key)
		}
	}
	for key := range r.limiters {
		add(key)
	}
	return out
}
