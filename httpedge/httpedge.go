// Package httpedge is the HTTP submission edge: POST /v1/messages with a
// raw RFC 5322 message (Content-Type: message/rfc822, the envelope in the
// query: from=, to= repeated) or a JSON message that it builds into MIME
// (emersion/go-message). Credentials are HTTP Basic against the same users
// file; the message then takes the SMTP edge's one path (smtpedge.Submit:
// the AUTH-failure throttle, sender ownership in MAIL FROM and From:, the
// validators, policies, journal).
//
// The contract: 202 {"id": ENVELOPE_ID} only after the Received event and
// the body are fsynced; otherwise an error with a JSON body
// {"error": sentence, "field": name} naming the bad field where there is
// one: 400 bad input, 401 missing or bad credentials, 403 a sender the
// user does not own, 413 over max_message_bytes, 429 too many AUTH
// failures, 503 with Retry-After when the journal cannot take it.
package httpedge

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/smtpedge"
)

// Options configure the handler.
type Options struct {
	Edge            *smtpedge.Server
	MaxMessageBytes int64
	Listener        string // for the Received event, e.g. "http/127.0.0.1:2580"
	Logger          *zap.Logger
}

// Handler serves the API.
func Handler(o Options) http.Handler {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/messages", func(w http.ResponseWriter, r *http.Request) { submit(o, w, r) })
	return mux
}

// apiError is an error answer.
type apiError struct {
	status int
	msg    string
	field  string
}

func (e *apiError) Error() string { return e.msg }

func badField(field, format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...), field: field}
}

func submit(o Options, w http.ResponseWriter, r *http.Request) {
	user, pass, ok := r.BasicAuth()
	if !ok {
		w.Header().Set("WWW-Authenticate", `Basic realm="ledgermail"`)
		reply(w, &apiError{status: http.StatusUnauthorized, msg: "credentials required (HTTP Basic, a user of the users file)"})
		return
	}
	// JSON carries attachments in base64: allow for its growth; the built
	// message is held to max_message_bytes.
	r.Body = http.MaxBytesReader(w, r.Body, o.MaxMessageBytes*2+64<<10)
	var from string
	var rcpts []string
	var msg []byte
	var err error
	ct := strings.ToLower(strings.TrimSpace(strings.Split(r.Header.Get("Content-Type"), ";")[0]))
	switch ct {
	case "message/rfc822":
		from, rcpts, msg, err = rawMessage(r, o.MaxMessageBytes)
	case "application/json":
		from, rcpts, msg, err = jsonMessage(r.Body, o.MaxMessageBytes)
	default:
		err = &apiError{status: http.StatusUnsupportedMediaType, msg: "Content-Type must be message/rfc822 or application/json", field: "Content-Type"}
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			err = &apiError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("the message exceeds max_message_bytes (%d)", o.MaxMessageBytes)}
		}
		reply(w, err)
		return
	}
	tlsInfo := ""
	if r.TLS != nil {
		tlsInfo = "TLS " + tlsVersion(r.TLS.Version)
	}
	id, err := o.Edge.Submit(smtpedge.Submission{ClientAddr: r.RemoteAddr, Listener: o.Listener, Username: user, Password: pass,
		From: from, Rcpts: rcpts, Body: msg, TLS: tlsInfo})
	if err != nil {
		reply(w, fromSMTP(err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	json.NewEncoder(w).Encode(map[string]string{"id": id})
}

// fromSMTP maps the SMTP edge's refusal to an HTTP answer.
func fromSMTP(err error) *apiError {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return &apiError{status: http.StatusServiceUnavailable, msg: "temporary failure, try again later"}
	}
	msg := fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
	switch {
	case se.Code == 535:
		return &apiError{status: http.StatusUnauthorized, msg: msg}
	case se.Code == 421 && se.EnhancedCode == smtp.EnhancedCode{4, 7, 0}:
		return &apiError{status: http.StatusTooManyRequests, msg: msg}
	case se.Code == 552:
		return &apiError{status: http.StatusRequestEntityTooLarge, msg: msg}
	case se.EnhancedCode == smtp.EnhancedCode{5, 7, 1}:
		return &apiError{status: http.StatusForbidden, msg: msg, field: "from"}
	case se.EnhancedCode == smtp.EnhancedCode{5, 1, 7}:
		return &apiError{status: http.StatusBadRequest, msg: msg, field: "from"}
	case se.EnhancedCode == smtp.EnhancedCode{5, 1, 3}, se.EnhancedCode == smtp.EnhancedCode{4, 5, 3}, se.Code == 554:
		return &apiError{status: http.StatusBadRequest, msg: msg, field: "to"}
	case se.Code >= 400 && se.Code < 500:
		return &apiError{status: http.StatusServiceUnavailable, msg: msg}
	}
	return &apiError{status: http.StatusBadRequest, msg: msg}
}

func reply(w http.ResponseWriter, err error) {
	ae, ok := err.(*apiError)
	if !ok {
		ae = &apiError{status: http.StatusBadRequest, msg: err.Error()}
	}
	if ae.status == http.StatusServiceUnavailable || ae.status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "60")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(ae.status)
	body := map[string]string{"error": ae.msg}
	if ae.field != "" {
		body["field"] = ae.field
	}
	json.NewEncoder(w).Encode(body)
}

// rawMessage reads a message/rfc822 body; the envelope is in the query.
func rawMessage(r *http.Request, max int64) (string, []string, []byte, error) {
	q := r.URL.Query()
	from, rcpts := q.Get("from"), q["to"]
	if from == "" {
		return "", nil, nil, badField("from", "the query must name the envelope sender: from=ADDRESS")
	}
	if len(rcpts) == 0 {
		return "", nil, nil, badField("to", "the query must name at least one recipient: to=ADDRESS")
	}
	msg, err := io.ReadAll(io.LimitReader(r.Body, max+1))
	if err != nil {
		return "", nil, nil, err
	}
	if int64(len(msg)) > max {
		return "", nil, nil, &apiError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("the message exceeds max_message_bytes (%d)", max)}
	}
	if len(msg) == 0 {
		return "", nil, nil, badField("body", "the message is empty")
	}
	return from, rcpts, msg, nil
}

func tlsVersion(v uint16) string {
	switch v {
	case 0x0304:
		return "1.3"
	case 0x0303:
		return "1.2"
	}
	return fmt.Sprintf("%#x", v)
}
