package smtpedge

import "bytes"

// SeparateHeader makes sure a header block is followed by an empty line:
// the first line that is neither a header field nor a continuation starts
// the body, and an empty line is inserted before it (Postfix does the
// same), so that body text never ends up among the headers. body has CRLF
// line endings (NormalizeLineEndings).
func SeparateHeader(body []byte) []byte {
	for i := 0; i < len(body); {
		j := bytes.Index(body[i:], []byte("\r\n"))
		if j < 0 {
			j = len(body) - i
		}
		line := body[i : i+j]
		if len(line) == 0 {
			return body // the separator is there
		}
		if !isHeaderLine(line) && !(i > 0 && (line[0] == ' ' || line[0] == '\t')) {
			out := make([]byte, 0, len(body)+2)
			out = append(out, body[:i]...)
			out = append(out, '\r', '\n')
			return append(out, body[i:]...)
		}
		i += j + 2
	}
	return body
}

// isHeaderLine reports whether line starts with a field name and a colon
// (RFC 5322: printable ASCII but ':' and space).
func isHeaderLine(line []byte) bool {
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return false
	}
	for _, c := range line[:colon] {
		if c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}
