package smtpedge

import (
	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/journal"
)

// Origin is what the Received event says of how a message came in, beyond
// the Transaction.
type Origin struct {
	Helo string
	TLS  string // "TLS 1.3 TLS_AES_128_GCM_SHA256", or ""
}

// Accept is the one way a message enters the queue, for every edge (SMTP,
// HTTP): line endings normalised, the header separated from the body, the
// Data-stage validators (sender ownership of From:/Sender:), the spam scan,
// the min_free check, then the Received event and the body made durable in
// one journal write, and only then the queue told. It returns the envelope
// ID, or an *smtp.SMTPError saying why not (the HTTP edge maps its code).
// t must have passed the Mail and Rcpt stages.
func (s *Server) Accept(t *Transaction, raw []byte, o Origin, log *zap.Logger) (string, error) {
	body := SeparateHeader(NormalizeLineEndings(raw))
	declared := t.Size
	t.Size, t.Header = int64(len(body)), policyHeader(body)
	if err := runValidators(s.validators, StageData, t); err != nil {
		log.Info("message refused by a validator", zap.Error(err))
		return "", err
	}
	var scanHeaders string
	if s.o.Scan != nil {
		h, reject := s.o.Scan(body)
		if reject {
			log.Info("message rejected as spam", zap.String("from", t.From))
			return "", errSpam
		}
		scanHeaders = h
	}
	if !s.o.Journal.HasRoom(int64(len(body))) {
		log.Warn("message refused: it would not fit above min_free", zap.Int("size", len(body)))
		return "", errNoStorage
	}
	id := events.NewID()
	rcv := events.Received{
		ScanHeaders: scanHeaders,
		Sender:      t.From, Recipients: append([]string(nil), t.Rcpts...), BodyKey: id, Size: int64(len(body)), BodySHA256: journal.BodySum(body),
		Listener: t.Listener, ClientAddr: t.ClientAddr, ClientName: t.RDNS, Helo: o.Helo, DeclaredSize: declared, TLS: o.TLS,
	}
	if t.Identity != nil {
		rcv.AuthUser = t.Identity.Name
	}
	if _, err := s.o.Journal.Append(journal.Write{
		Bodies: []journal.Body{{Key: id, Data: body}},
		Events: []events.Event{{Envelope: id, Payload: rcv}},
	}); err != nil {
		log.Error("journal append failed; message refused", zap.String("envelope", id), zap.Error(err))
		return "", errJournal
	}
	log.Info("message accepted", zap.String("envelope", id), zap.String("listener", t.Listener), zap.String("from", t.From),
		zap.Strings("to", rcv.Recipients), zap.Int("size", len(body)), zap.String("tls", rcv.TLS))
	s.o.Accepted(id)
	return id, nil
}
