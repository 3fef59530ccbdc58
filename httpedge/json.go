package httpedge

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	netmail "net/mail"
	"strings"
	"time"

	"github.com/emersion/go-message/mail"
)

// jsonMessage is the JSON form of POST /v1/messages.
type jsonMsg struct {
	From        string            `json:"from"`
	To          []string          `json:"to"`
	Cc          []string          `json:"cc"`
	Bcc         []string          `json:"bcc"`
	Subject     string            `json:"subject"`
	Text        string            `json:"text"`
	HTML        string            `json:"html"`
	Headers     map[string]string `json:"headers"`
	Attachments []struct {
		Filename      string `json:"filename"`
		ContentType   string `json:"content_type"`
		ContentBase64 string `json:"content_base64"`
	} `json:"attachments"`
}

// structural headers the JSON fields own.
var reserved = map[string]bool{"from": true, "to": true, "cc": true, "bcc": true, "subject": true, "mime-version": true,
	"content-type": true, "content-transfer-encoding": true, "content-disposition": true}

// jsonMessage decodes the JSON form and builds the MIME message: text and
// html as multipart/alternative, attachments beside them in
// multipart/mixed; Bcc recipients get the message but no header.
func jsonMessage(body io.Reader, max int64) (string, []string, []byte, error) {
	var m jsonMsg
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return "", nil, nil, err
		}
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) {
			return "", nil, nil, badField(ute.Field, "%s must be a JSON %s", ute.Field, ute.Type.Kind())
		}
		if strings.HasPrefix(err.Error(), "json: unknown field ") {
			f := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
			return "", nil, nil, badField(f, "unknown field %q", f)
		}
		return "", nil, nil, badField("body", "the request is not valid JSON: %v", err)
	}
	from, err := netmail.ParseAddress(m.From)
	if m.From == "" || err != nil {
		return "", nil, nil, badField("from", "from must be an address like \"Ann <ann@example.com>\"")
	}
	var h mail.Header
	h.SetDate(time.Now())
	h.SetAddressList("From", []*mail.Address{{Name: from.Name, Address: from.Address}})
	var rcpts []string
	for _, f := range []struct {
		name  string
		list  []string
		field string
	}{{"To", m.To, "to"}, {"Cc", m.Cc, "cc"}, {"", m.Bcc, "bcc"}} {
		var addrs []*mail.Address
		for i, a := range f.list {
			p, err := netmail.ParseAddress(a)
			if err != nil {
				return "", nil, nil, badField(fmt.Sprintf("%s[%d]", f.field, i), "%s[%d] %q is not an address", f.field, i, a)
			}
			addrs = append(addrs, &mail.Address{Name: p.Name, Address: p.Address})
			rcpts = append(rcpts, p.Address)
		}
		if f.name != "" && len(addrs) > 0 {
			h.SetAddressList(f.name, addrs)
		}
	}
	if len(rcpts) == 0 {
		return "", nil, nil, badField("to", "at least one recipient is needed in to, cc or bcc")
	}
	h.SetSubject(m.Subject)
	for k, v := range m.Headers {
		if reserved[strings.ToLower(k)] || strings.ContainsAny(k, ": \r\n") || strings.ContainsAny(v, "\r\n") {
			return "", nil, nil, badField("headers."+k, "header %q cannot be set here", k)
		}
		h.Set(k, v)
	}
	if m.Text == "" && m.HTML == "" && len(m.Attachments) == 0 {
		return "", nil, nil, badField("text", "the message needs text, html or an attachment")
	}
	var buf bytes.Buffer
	mw, err := mail.CreateWriter(&buf, h)
	if err != nil {
		return "", nil, nil, err
	}
	if m.Text != "" || m.HTML != "" {
		iw, err := mw.CreateInline()
		if err != nil {
			return "", nil, nil, err
		}
		for _, part := range []struct{ ct, s string }{{"text/plain", m.Text}, {"text/html", m.HTML}} {
			if part.s == "" {
				continue
			}
			var ih mail.InlineHeader
			ih.Set("Content-Type", part.ct+"; charset=utf-8")
			pw, err := iw.CreatePart(ih)
			if err != nil {
				return "", nil, nil, err
			}
			io.WriteString(pw, part.s)
			pw.Close()
		}
		iw.Close()
	}
	for i, a := range m.Attachments {
		data, err := base64.StdEncoding.DecodeString(a.ContentBase64)
		if err != nil {
			return "", nil, nil, badField(fmt.Sprintf("attachments[%d].content_base64", i), "attachments[%d].content_base64 is not base64", i)
		}
		if a.Filename == "" {
			return "", nil, nil, badField(fmt.Sprintf("attachments[%d].filename", i), "attachments[%d] needs a filename", i)
		}
		ct := a.ContentType
		if ct == "" {
			ct = "application/octet-stream"
		}
		var ah mail.AttachmentHeader
		ah.Set("Content-Type", ct)
		ah.SetFilename(a.Filename)
		aw, err := mw.CreateAttachment(ah)
		if err != nil {
			return "", nil, nil, err
		}
		aw.Write(data)
		aw.Close()
		if int64(buf.Len()) > max {
			return "", nil, nil, &apiError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("the message exceeds max_message_bytes (%d)", max)}
		}
	}
	if err := mw.Close(); err != nil {
		return "", nil, nil, err
	}
	if int64(buf.Len()) > max {
		return "", nil, nil, &apiError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("the message exceeds max_message_bytes (%d)", max)}
	}
	return from.Address, rcpts, buf.Bytes(), nil
}
