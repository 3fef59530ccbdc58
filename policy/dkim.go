package policy

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/emersion/go-msgauth/dkim"
)

// DKIMKey signs mail from one domain with one selector.
type DKIMKey struct {
	Domain   string
	Selector string
	Signer   crypto.Signer
}

// signedHeaders are the fields DKIM signs (missing ones are over-signed, so
// that they cannot be added later).
var signedHeaders = []string{"From", "Sender", "Reply-To", "To", "Cc", "Subject", "Date", "Message-ID",
	"In-Reply-To", "References", "MIME-Version", "Content-Type", "Content-Transfer-Encoding"}

// LoadDKIMKey reads a PEM private key (PKCS#8 RSA or Ed25519, or PKCS#1 RSA).
func LoadDKIMKey(domain, selector, path string) (DKIMKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return DKIMKey{}, fmt.Errorf("dkim key for %s: %w", domain, err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return DKIMKey{}, fmt.Errorf("dkim key for %s: %s holds no PEM block", domain, path)
	}
	var key any
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return DKIMKey{}, fmt.Errorf("dkim key for %s: %s: %w", domain, path, err)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return DKIMKey{}, fmt.Errorf("dkim key for %s: %s is not a signing key", domain, path)
	}
	switch s.Public().(type) {
	case *rsa.PublicKey, ed25519.PublicKey:
	default:
		return DKIMKey{}, fmt.Errorf("dkim key for %s: %s is neither RSA nor Ed25519", domain, path)
	}
	return DKIMKey{Domain: strings.ToLower(domain), Selector: selector, Signer: s}, nil
}

// Sign returns the DKIM-Signature header field (CRLF-terminated) for msg.
func (k DKIMKey) Sign(msg []byte) (string, error) { return k.SignReader(bytes.NewReader(msg)) }

// SignReader is Sign reading the message from r, streaming: only the
// header block is held in memory.
func (k DKIMKey) SignReader(r io.Reader) (string, error) {
	s, err := dkim.NewSigner(&dkim.SignOptions{
		Domain: k.Domain, Selector: k.Selector, Signer: k.Signer,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
		HeaderKeys: signedHeaders,
	})
	if err != nil {
		return "", fmt.Errorf("dkim %s: %w", k.Domain, err)
	}
	if _, err := io.Copy(s, r); err != nil {
		return "", fmt.Errorf("dkim %s: %w", k.Domain, err)
	}
	if err := s.Close(); err != nil {
		return "", fmt.Errorf("dkim %s: %w", k.Domain, err)
	}
	return s.Signature(), nil
}

// GenerateDKIMKey makes a key ("rsa" 2048-bit or "ed25519") and returns its
// PKCS#8 PEM and the DNS TXT record value that publishes it.
func GenerateDKIMKey(kind string) (pemBytes []byte, txt string, err error) {
	var priv any
	var pub []byte
	var k string
	switch kind {
	case "rsa", "":
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, "", err
		}
		priv, k = key, "rsa"
		if pub, err = x509.MarshalPKIXPublicKey(&key.PublicKey); err != nil {
			return nil, "", err
		}
	case "ed25519":
		pk, sk, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, "", err
		}
		priv, k, pub = sk, "ed25519", []byte(pk)
	default:
		return nil, "", fmt.Errorf("key type %q is not rsa or ed25519", kind)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, "", err
	}
	var b bytes.Buffer
	pem.Encode(&b, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
	return b.Bytes(), fmt.Sprintf("v=DKIM1; k=%s; p=%s", k, base64.StdEncoding.EncodeToString(pub)), nil
}
