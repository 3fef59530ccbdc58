package actors

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
}

func newReadyQueues(limit int) *readyQueues {
	return &readyQueues{byKey: map[string][]string{}, inflight: map[string]int{}, limit: limit}
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
	for tried := 0; tried < len(r.ring); tried++ {
		if r.cursor >= len(r.ring) {
			r.cursor = 0
		}
		key = r.ring[r.cursor]
		if key != "" && r.inflight[key] >= r.limit {
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
