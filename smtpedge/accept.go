package smtpedge

import (
	"errors"

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
// HTTP, the maildrop): the message has been received into sp (line
// endings normalised, the header separated, streamed to storage when it is
// big); then the Data-stage validators (sender ownership of
// From:/Sender:), the spam scan, the min_free check, then the Received
// event and the body made durable in one journal write, and only then the
// queue told. It returns the envelope ID, or an *smtp.SMTPError saying why
// not (the HTTP edge maps its code). t must have passed the Mail and Rcpt
// stages. Accept always consumes sp.
func (s *Server) Accept(t *Transaction, sp *Spool, o Origin, log *zap.Logger) (string, error) {
	if !sp.finished {
		sp.finish()
	}
	if sp.err != nil {
		err := sp.err
		sp.Discard()
		if errors.Is(err, errNoMemory) {
			log.Warn("message refused: body_memory is exhausted", zap.Int64("body_memory", s.budget.max))
			return "", errNoMemoryReply
		}
		log.Error("message refused: its body could not be stored", zap.Error(err))
		return "", errNoStorage
	}
	declared := t.Size
	t.Size, t.Header = sp.Size(), sp.Header()
	if err := runValidators(s.validators, StageData, t); err != nil {
		sp.Discard()
		log.Info("message refused by a validator", zap.Error(err))
		return "", err
	}
	var scanHeaders string
	if s.o.Scan != nil {
		if body := sp.InMemory(); body != nil {
			h, reject := s.o.Scan(body)
			if reject {
				sp.Discard()
				log.Info("message rejected as spam", zap.String("from", t.From))
				return "", errSpam
			}
			scanHeaders = h
		} else {
			// As spamc does with messages over its max-size.
			log.Info("message too big for the content scan; not scanned", zap.Int64("size", sp.Size()))
		}
	}
	if !s.o.Journal.HasRoom(sp.Size()) {
		sp.Discard()
		log.Warn("message refused: it would not fit above min_free", zap.Int64("size", sp.Size()))
		return "", errNoStorage
	}
	id := events.NewID()
	rcv := events.Received{
		ScanHeaders: scanHeaders,
		Sender:      t.From, Recipients: append([]string(nil), t.Rcpts...), BodyKey: id, Size: sp.Size(), BodySHA256: sp.Sum(),
		Listener: t.Listener, ClientAddr: t.ClientAddr, ClientName: t.RDNS, Helo: o.Helo, DeclaredSize: declared, TLS: o.TLS,
	}
	if t.Identity != nil {
		rcv.AuthUser = t.Identity.Name
	}
	_, err := s.o.Journal.Append(journal.Write{
		Bodies: []journal.Body{sp.Body(id)},
		Events: []events.Event{{Envelope: id, Payload: rcv}},
	})
	if err != nil {
		sp.Release()
		log.Error("journal append failed; message refused", zap.String("envelope", id), zap.Error(err))
		return "", errJournal
	}
	t.Header = nil // it is a part of the body's buffer, which goes back to the pool
	sp.Recycle()
	log.Info("message accepted", zap.String("envelope", id), zap.String("listener", t.Listener), zap.String("from", t.From),
		zap.Strings("to", rcv.Recipients), zap.Int64("size", sp.Size()), zap.String("tls", rcv.TLS))
	s.o.Accepted(id)
	return id, nil
}
