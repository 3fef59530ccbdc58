package events

import (
	"encoding/json"
	"strconv"
	"time"
)

// writer appends the JSON of an event without reflection, byte for byte
// what encoding/json.Marshal writes for the same value (a differential
// fuzz test holds it to that): fields in declaration order, omitempty
// honoured, a nil slice as null, strings escaped alike (a string with
// non-ASCII bytes is handed to encoding/json).
type writer struct {
	b   []byte
	err error
}

// key writes a field name; first is the object's opening field.
func (w *writer) key(k string, first bool) {
	if !first {
		w.b = append(w.b, ',')
	}
	w.b = append(w.b, '"')
	w.b = append(w.b, k...)
	w.b = append(w.b, '"', ':')
}

func (w *writer) str(s string) {
	mark := len(w.b)
	w.b = append(w.b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x80 {
			// Non-ASCII: invalid UTF-8 and U+2028/2029 need encoding/json's
			// treatment; hand it the whole string.
			w.b = w.b[:mark]
			w.marshalString(s)
			return
		}
		if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
			continue
		}
		w.b = append(w.b, s[start:i]...)
		switch c {
		case '"', '\\':
			w.b = append(w.b, '\\', c)
		case '\n':
			w.b = append(w.b, '\\', 'n')
		case '\r':
			w.b = append(w.b, '\\', 'r')
		case '\t':
			w.b = append(w.b, '\\', 't')
		case '\b':
			w.b = append(w.b, '\\', 'b')
		case '\f':
			w.b = append(w.b, '\\', 'f')
		default: // other controls, and <, >, & as encoding/json's HTML escaping
			w.b = append(w.b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	w.b = append(w.b, s[start:]...)
	w.b = append(w.b, '"')
}

const hexDigits = "0123456789abcdef"

func (w *writer) marshalString(s string) {
	b, err := json.Marshal(s)
	if err != nil && w.err == nil {
		w.err = err
	}
	w.b = append(w.b, b...)
}

func (w *writer) strs(s []string) {
	if s == nil {
		w.b = append(w.b, "null"...)
		return
	}
	w.b = append(w.b, '[')
	for i, v := range s {
		if i > 0 {
			w.b = append(w.b, ',')
		}
		w.str(v)
	}
	w.b = append(w.b, ']')
}

func (w *writer) int(v int64)   { w.b = strconv.AppendInt(w.b, v, 10) }
func (w *writer) uint(v uint64) { w.b = strconv.AppendUint(w.b, v, 10) }

func (w *writer) bool(v bool) { w.b = strconv.AppendBool(w.b, v) }

func (w *writer) float(f float64) {
	if f == 0 || (f >= 1e-6 && f < 1e21) || (f <= -1e-6 && f > -1e21) {
		w.b = strconv.AppendFloat(w.b, f, 'f', -1, 64)
		return
	}
	b, err := json.Marshal(f) // exponent form, NaN and Inf: as encoding/json does
	if err != nil && w.err == nil {
		w.err = err
	}
	w.b = append(w.b, b...)
}

func (w *writer) time(t time.Time) {
	if y := t.Year(); y < 0 || y > 9999 {
		b, err := json.Marshal(t) // the error encoding/json gives
		if err != nil && w.err == nil {
			w.err = err
		}
		w.b = append(w.b, b...)
		return
	}
	w.b = append(w.b, '"')
	w.b = t.AppendFormat(w.b, time.RFC3339Nano)
	w.b = append(w.b, '"')
}

// omitted strings and numbers, as omitempty decides.
func (w *writer) optStr(k, v string) {
	if v != "" {
		w.key(k, false)
		w.str(v)
	}
}

func (w *writer) optInt(k string, v int64) {
	if v != 0 {
		w.key(k, false)
		w.int(v)
	}
}
