package events

import (
	"encoding/json"
	"errors"
	"strconv"
	"time"
	"unicode/utf8"
)

// reader decodes the JSON this package writes without reflection: a cursor
// over one record with typed readers for the field shapes events use. It
// is a fast path only. It gives up (errSlow) on anything it does not
// handle exactly as encoding/json would: an unknown or differently cased
// key, a number of the wrong kind, a malformed token. The caller then
// decodes the record with encoding/json, so results and errors are the
// standard library's.
type reader struct {
	b []byte
	i int
}

var errSlow = errors.New("events: not on the fast path")

func (r *reader) ws() {
	for r.i < len(r.b) {
		switch r.b[r.i] {
		case ' ', '\t', '\n', '\r':
			r.i++
		default:
			return
		}
	}
}

// next skips white space and reports the next byte (0 at the end).
func (r *reader) next() byte {
	r.ws()
	if r.i < len(r.b) {
		return r.b[r.i]
	}
	return 0
}

func (r *reader) expect(c byte) error {
	if r.next() != c {
		return errSlow
	}
	r.i++
	return nil
}

// null consumes a JSON null if one is next.
func (r *reader) null() bool {
	r.ws()
	if len(r.b)-r.i >= 4 && string(r.b[r.i:r.i+4]) == "null" {
		r.i += 4
		return true
	}
	return false
}

// object calls field for each key of an object (or nothing for null);
// field must consume the value.
func (r *reader) object(field func(key string) error) error {
	if r.null() {
		return nil
	}
	if err := r.expect('{'); err != nil {
		return err
	}
	if r.next() == '}' {
		r.i++
		return nil
	}
	for {
		k, err := r.rawString()
		if err != nil {
			return err
		}
		if err := r.expect(':'); err != nil {
			return err
		}
		if err := field(k); err != nil {
			return err
		}
		switch r.next() {
		case ',':
			r.i++
		case '}':
			r.i++
			return nil
		default:
			return errSlow
		}
	}
}

// array calls elem for each element of an array (nothing for null).
func (r *reader) array(elem func() error) error {
	if r.null() {
		return nil
	}
	if err := r.expect('['); err != nil {
		return err
	}
	if r.next() == ']' {
		r.i++
		return nil
	}
	for {
		if err := elem(); err != nil {
			return err
		}
		switch r.next() {
		case ',':
			r.i++
		case ']':
			r.i++
			return nil
		default:
			return errSlow
		}
	}
}

// rawString reads a string without escapes and of valid UTF-8 (what keys
// and almost every value are); anything else goes to the slow path.
func (r *reader) rawString() (string, error) {
	if r.next() != '"' {
		return "", errSlow
	}
	start := r.i + 1
	for j := start; j < len(r.b); j++ {
		switch c := r.b[j]; {
		case c == '"':
			s := r.b[start:j]
			r.i = j + 1
			if !utf8.Valid(s) {
				return "", errSlow
			}
			return string(s), nil
		case c == '\\' || c < 0x20:
			return "", errSlow
		}
	}
	return "", errSlow
}

// str reads a string value, with escapes decoded by encoding/json (null
// leaves it empty).
func (r *reader) str(dst *string) error {
	if r.null() {
		return nil
	}
	if r.next() != '"' {
		return errSlow
	}
	start := r.i
	escaped := false
	for j := start + 1; j < len(r.b); j++ {
		switch c := r.b[j]; {
		case c == '\\':
			escaped = true
			j++
		case c == '"':
			tok := r.b[start : j+1]
			r.i = j + 1
			if !utf8.Valid(tok) {
				return errSlow // encoding/json would substitute U+FFFD
			}
			if !escaped {
				*dst = string(tok[1 : len(tok)-1])
				return nil
			}
			return unescape(tok[1:len(tok)-1], dst)
		case c < 0x20:
			return errSlow
		}
	}
	return errSlow
}

// unescape decodes a string's escapes: the short ones and \uXXXX outside
// the surrogates (a surrogate pair, rare in mail, takes the slow path).
func unescape(s []byte, dst *string) error {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		i++
		if i >= len(s) {
			return errSlow
		}
		switch s[i] {
		case '"', '\\', '/':
			out = append(out, s[i])
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			if i+4 >= len(s) {
				return errSlow
			}
			v, err := strconv.ParseUint(string(s[i+1:i+5]), 16, 32)
			if err != nil || (v >= 0xd800 && v < 0xe000) {
				return errSlow
			}
			out = utf8.AppendRune(out, rune(v))
			i += 4
		default:
			return errSlow
		}
	}
	*dst = string(out)
	return nil
}

// strs reads an array of strings (null: nil).
func (r *reader) strs(dst *[]string) error {
	if r.null() {
		*dst = nil
		return nil
	}
	out := make([]string, 0, 4)
	err := r.array(func() error {
		var s string
		if err := r.str(&s); err != nil {
			return err
		}
		out = append(out, s)
		return nil
	})
	*dst = out
	return err
}

// number returns the next number token.
func (r *reader) number() ([]byte, error) {
	r.ws()
	start := r.i
	for r.i < len(r.b) {
		c := r.b[r.i]
		if (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E' {
			r.i++
			continue
		}
		break
	}
	if r.i == start {
		return nil, errSlow
	}
	return r.b[start:r.i], nil
}

func (r *reader) int64(dst *int64) error {
	if r.null() {
		return nil
	}
	tok, err := r.number()
	if err != nil {
		return err
	}
	v, err := strconv.ParseInt(string(tok), 10, 64)
	if err != nil || (len(tok) > 1 && (tok[0] == '0' || (tok[0] == '-' && tok[1] == '0'))) {
		return errSlow
	}
	*dst = v
	return nil
}

func (r *reader) uint64(dst *uint64) error {
	if r.null() {
		return nil
	}
	tok, err := r.number()
	if err != nil {
		return err
	}
	v, err := strconv.ParseUint(string(tok), 10, 64)
	if err != nil || (len(tok) > 1 && tok[0] == '0') {
		return errSlow
	}
	*dst = v
	return nil
}

func (r *reader) int(dst *int) error {
	var v int64
	if err := r.int64(&v); err != nil {
		return err
	}
	*dst = int(v)
	return nil
}

func (r *reader) float(dst *float64) error {
	if r.null() {
		return nil
	}
	tok, err := r.number()
	if err != nil {
		return err
	}
	if !json.Valid(tok) {
		return errSlow
	}
	v, err := strconv.ParseFloat(string(tok), 64)
	if err != nil {
		return errSlow
	}
	*dst = v
	return nil
}

func (r *reader) bool(dst *bool) error {
	r.ws()
	switch {
	case r.null():
	case len(r.b)-r.i >= 4 && string(r.b[r.i:r.i+4]) == "true":
		r.i += 4
		*dst = true
	case len(r.b)-r.i >= 5 && string(r.b[r.i:r.i+5]) == "false":
		r.i += 5
		*dst = false
	default:
		return errSlow
	}
	return nil
}

// time reads an RFC 3339 timestamp as time.Time's UnmarshalJSON does.
func (r *reader) time(dst *time.Time) error {
	if r.null() {
		return nil
	}
	if r.next() != '"' {
		return errSlow
	}
	end := r.i + 1
	for end < len(r.b) && r.b[end] != '"' {
		if r.b[end] == '\\' {
			return errSlow
		}
		end++
	}
	if end >= len(r.b) {
		return errSlow
	}
	if err := dst.UnmarshalJSON(r.b[r.i : end+1]); err != nil {
		return errSlow
	}
	r.i = end + 1
	return nil
}

// raw returns the bytes of the next value (any JSON), checked by
// json.Valid only when it is not an object of plain tokens.
func (r *reader) raw() ([]byte, error) {
	r.ws()
	start := r.i
	if err := r.skip(0); err != nil {
		return nil, err
	}
	return r.b[start:r.i], nil
}

// skip moves past one value; it accepts only well-formed JSON.
func (r *reader) skip(depth int) error {
	if depth > 64 {
		return errSlow
	}
	switch c := r.next(); {
	case c == '{':
		return r.object(func(string) error { return r.skip(depth + 1) })
	case c == '[':
		return r.array(func() error { return r.skip(depth + 1) })
	case c == '"':
		var s string
		return r.str(&s)
	case c == 't' || c == 'f':
		var b bool
		return r.bool(&b)
	case c == 'n':
		if r.null() {
			return nil
		}
		return errSlow
	default:
		var f float64
		return r.float(&f)
	}
}

// end checks that only white space follows.
func (r *reader) end() error {
	if r.next() != 0 {
		return errSlow
	}
	return nil
}
