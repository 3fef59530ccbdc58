package events

// The fast codec of the event types every message writes (Received,
// PoliciesApplied, Split, AttemptStarted, Attempted, Deferred, Delivered,
// Bounced): hand-written appenders and readers instead of encoding/json's
// reflection on every field. The stored form does not change. Other types,
// and any record the readers give up on, take encoding/json.

// fastPayload encodes and decodes one payload type.
type fastPayload struct {
	write func(w *writer, p Payload)
	read  func(r *reader) (Payload, error)
}

var fastPayloads = map[Type]fastPayload{
	TypeReceived:        {writeReceived, readReceived},
	TypePoliciesApplied: {writePoliciesApplied, readPoliciesApplied},
	TypeSplit:           {writeSplit, readSplit},
	TypeAttemptStarted:  {writeAttemptStarted, readAttemptStarted},
	TypeAttempted:       {writeAttempted, readAttempted},
	TypeDeferred:        {writeDeferred, readDeferred},
	TypeDelivered:       {writeDelivered, readDelivered},
	TypeBounced:         {writeBounced, readBounced},
}

func writeReceived(w *writer, p Payload) {
	v := p.(Received)
	w.b = append(w.b, '{')
	w.key("sender", true)
	w.str(v.Sender)
	w.key("recipients", false)
	w.strs(v.Recipients)
	w.key("body_key", false)
	w.str(v.BodyKey)
	w.optStr("body_sha256", v.BodySHA256)
	if v.BodySegment != 0 {
		w.key("body_segment", false)
		w.uint(v.BodySegment)
	}
	w.optInt("body_offset", v.BodyOffset)
	w.key("size", false)
	w.int(v.Size)
	w.optStr("listener", v.Listener)
	w.optStr("client_addr", v.ClientAddr)
	w.optStr("client_name", v.ClientName)
	w.optStr("helo", v.Helo)
	w.optStr("tls", v.TLS)
	w.optStr("auth_user", v.AuthUser)
	w.optInt("declared_size", v.DeclaredSize)
	w.optStr("scan_headers", v.ScanHeaders)
	w.optStr("parent", v.Parent)
	w.b = append(w.b, '}')
}

func readReceived(r *reader) (Payload, error) {
	var v Received
	err := r.object(func(k string) error {
		switch k {
		case "sender":
			return r.str(&v.Sender)
		case "recipients":
			return r.strs(&v.Recipients)
		case "body_key":
			return r.str(&v.BodyKey)
		case "body_sha256":
			return r.str(&v.BodySHA256)
		case "body_segment":
			return r.uint64(&v.BodySegment)
		case "body_offset":
			return r.int64(&v.BodyOffset)
		case "size":
			return r.int64(&v.Size)
		case "listener":
			return r.str(&v.Listener)
		case "client_addr":
			return r.str(&v.ClientAddr)
		case "client_name":
			return r.str(&v.ClientName)
		case "helo":
			return r.str(&v.Helo)
		case "tls":
			return r.str(&v.TLS)
		case "auth_user":
			return r.str(&v.AuthUser)
		case "declared_size":
			return r.int64(&v.DeclaredSize)
		case "scan_headers":
			return r.str(&v.ScanHeaders)
		case "parent":
			return r.str(&v.Parent)
		}
		return errSlow
	})
	return v, err
}

func writePoliciesApplied(w *writer, p Payload) {
	v := p.(PoliciesApplied)
	w.b = append(w.b, '{')
	w.key("policies", true)
	w.strs(v.Policies)
	w.optStr("prepend", v.Prepend)
	w.key("recipients", false)
	w.strs(v.Recipients)
	w.b = append(w.b, '}')
}

func readPoliciesApplied(r *reader) (Payload, error) {
	var v PoliciesApplied
	err := r.object(func(k string) error {
		switch k {
		case "policies":
			return r.strs(&v.Policies)
		case "prepend":
			return r.str(&v.Prepend)
		case "recipients":
			return r.strs(&v.Recipients)
		}
		return errSlow
	})
	return v, err
}

func writeSplit(w *writer, p Payload) {
	v := p.(Split)
	w.b = append(w.b, '{')
	w.key("mode", true)
	w.str(v.Mode)
	w.key("children", false)
	if v.Children == nil {
		w.b = append(w.b, "null"...)
	} else {
		w.b = append(w.b, '[')
		for i, c := range v.Children {
			if i > 0 {
				w.b = append(w.b, ',')
			}
			w.b = append(w.b, '{')
			w.key("id", true)
			w.str(c.ID)
			w.key("recipients", false)
			w.strs(c.Recipients)
			w.b = append(w.b, '}')
		}
		w.b = append(w.b, ']')
	}
	w.b = append(w.b, '}')
}

func readSplit(r *reader) (Payload, error) {
	var v Split
	err := r.object(func(k string) error {
		switch k {
		case "mode":
			return r.str(&v.Mode)
		case "children":
			if r.null() {
				v.Children = nil
				return nil
			}
			v.Children = []Child{}
			return r.array(func() error {
				var c Child
				err := r.object(func(k string) error {
					switch k {
					case "id":
						return r.str(&c.ID)
					case "recipients":
						return r.strs(&c.Recipients)
					}
					return errSlow
				})
				v.Children = append(v.Children, c)
				return err
			})
		}
		return errSlow
	})
	return v, err
}

func writeAttemptStarted(w *writer, p Payload) {
	v := p.(AttemptStarted)
	w.b = append(w.b, '{')
	w.key("attempt", true)
	w.int(int64(v.Attempt))
	w.key("recipients", false)
	w.strs(v.Recipients)
	w.b = append(w.b, '}')
}

func readAttemptStarted(r *reader) (Payload, error) {
	var v AttemptStarted
	err := r.object(func(k string) error {
		switch k {
		case "attempt":
			return r.int(&v.Attempt)
		case "recipients":
			return r.strs(&v.Recipients)
		}
		return errSlow
	})
	return v, err
}

func writeAttempted(w *writer, p Payload) {
	v := p.(Attempted)
	w.b = append(w.b, '{')
	w.key("attempt", true)
	w.int(int64(v.Attempt))
	w.optStr("host", v.Host)
	w.optStr("tls", v.TLS)
	w.key("results", false)
	if v.Results == nil {
		w.b = append(w.b, "null"...)
	} else {
		w.b = append(w.b, '[')
		for i, res := range v.Results {
			if i > 0 {
				w.b = append(w.b, ',')
			}
			w.b = append(w.b, '{')
			w.key("rcpt", true)
			w.str(res.Recipient)
			w.key("code", false)
			w.int(int64(res.Code))
			w.optStr("enhanced", res.Enhanced)
			w.key("message", false)
			w.str(res.Message)
			w.key("temporary", false)
			w.bool(res.Temporary)
			w.b = append(w.b, '}')
		}
		w.b = append(w.b, ']')
	}
	w.key("seconds", false)
	w.float(v.Seconds)
	w.optStr("tls_policy", v.TLSPolicy)
	w.optStr("sts_mode", v.STSMode)
	w.optStr("sts_id", v.STSID)
	w.optStr("tls_result", v.TLSResult)
	w.optStr("tls_detail", v.TLSDetail)
	w.b = append(w.b, '}')
}

func readAttempted(r *reader) (Payload, error) {
	var v Attempted
	err := r.object(func(k string) error {
		switch k {
		case "attempt":
			return r.int(&v.Attempt)
		case "host":
			return r.str(&v.Host)
		case "tls":
			return r.str(&v.TLS)
		case "results":
			if r.null() {
				v.Results = nil
				return nil
			}
			v.Results = []RcptResult{}
			return r.array(func() error {
				var res RcptResult
				err := r.object(func(k string) error {
					switch k {
					case "rcpt":
						return r.str(&res.Recipient)
					case "code":
						return r.int(&res.Code)
					case "enhanced":
						return r.str(&res.Enhanced)
					case "message":
						return r.str(&res.Message)
					case "temporary":
						return r.bool(&res.Temporary)
					}
					return errSlow
				})
				v.Results = append(v.Results, res)
				return err
			})
		case "seconds":
			return r.float(&v.Seconds)
		case "tls_policy":
			return r.str(&v.TLSPolicy)
		case "sts_mode":
			return r.str(&v.STSMode)
		case "sts_id":
			return r.str(&v.STSID)
		case "tls_result":
			return r.str(&v.TLSResult)
		case "tls_detail":
			return r.str(&v.TLSDetail)
		}
		return errSlow
	})
	return v, err
}

func writeDeferred(w *writer, p Payload) {
	v := p.(Deferred)
	w.b = append(w.b, '{')
	w.key("recipients", true)
	w.strs(v.Recipients)
	w.key("next_attempt", false)
	w.time(v.NextAttempt)
	w.key("reason", false)
	w.str(v.Reason)
	w.optStr("delay_dsn", v.DelayDSN)
	w.b = append(w.b, '}')
}

func readDeferred(r *reader) (Payload, error) {
	var v Deferred
	err := r.object(func(k string) error {
		switch k {
		case "recipients":
			return r.strs(&v.Recipients)
		case "next_attempt":
			return r.time(&v.NextAttempt)
		case "reason":
			return r.str(&v.Reason)
		case "delay_dsn":
			return r.str(&v.DelayDSN)
		}
		return errSlow
	})
	return v, err
}

func writeDelivered(w *writer, p Payload) {
	v := p.(Delivered)
	w.b = append(w.b, '{')
	w.key("recipients", true)
	w.strs(v.Recipients)
	w.optStr("host", v.Host)
	w.b = append(w.b, '}')
}

func readDelivered(r *reader) (Payload, error) {
	var v Delivered
	err := r.object(func(k string) error {
		switch k {
		case "recipients":
			return r.strs(&v.Recipients)
		case "host":
			return r.str(&v.Host)
		}
		return errSlow
	})
	return v, err
}

func writeBounced(w *writer, p Payload) {
	v := p.(Bounced)
	w.b = append(w.b, '{')
	w.key("recipients", true)
	w.strs(v.Recipients)
	w.key("reason", false)
	w.str(v.Reason)
	w.optStr("dsn", v.DSN)
	w.b = append(w.b, '}')
}

func readBounced(r *reader) (Payload, error) {
	var v Bounced
	err := r.object(func(k string) error {
		switch k {
		case "recipients":
			return r.strs(&v.Recipients)
		case "reason":
			return r.str(&v.Reason)
		case "dsn":
			return r.str(&v.DSN)
		}
		return errSlow
	})
	return v, err
}

// marshalFast writes the wire form of e when its payload has a fast
// codec; ok is false otherwise.
func marshalFast(e Event, v int) (b []byte, ok bool, err error) {
	fp, ok := fastPayloads[e.Type()]
	if !ok {
		return nil, false, nil
	}
	w := writer{b: make([]byte, 0, 256)}
	w.b = append(w.b, '{')
	w.key("type", true)
	w.str(string(e.Type()))
	w.key("v", false)
	w.int(int64(v))
	w.key("env", false)
	w.str(e.Envelope)
	w.key("time", false)
	w.time(e.Time.UTC())
	w.key("data", false)
	fp.write(&w, e.Payload)
	w.b = append(w.b, '}')
	return w.b, true, w.err
}

// unmarshalFast decodes a record whose fields come in the order Marshal
// writes them and whose type has a fast codec; errSlow otherwise.
func unmarshalFast(b []byte) (Event, error) {
	r := reader{b: b}
	var e Event
	var typ string
	var fp fastPayload
	err := r.object(func(k string) error {
		switch k {
		case "type":
			if err := r.str(&typ); err != nil {
				return err
			}
			var ok bool
			if fp, ok = fastPayloads[Type(typ)]; !ok {
				return errSlow
			}
			return nil
		case "v":
			return r.int(&e.Version)
		case "env":
			return r.str(&e.Envelope)
		case "time":
			return r.time(&e.Time)
		case "data":
			if fp.read == nil || r.next() != '{' {
				return errSlow // data before type, or not an object
			}
			p, err := fp.read(&r)
			e.Payload = p
			return err
		}
		return errSlow
	})
	if err != nil || e.Payload == nil {
		return Event{}, errSlow
	}
	if err := r.end(); err != nil {
		return Event{}, err
	}
	return e, nil
}
