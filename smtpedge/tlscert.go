package smtpedge

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"sync"
	"time"

	"github.com/ledgermail/ledgermail/journal"
)

// SelfSigned makes sure certPath/keyPath exist, generating a self-signed
// ECDSA certificate for hostname on first use.
func SelfSigned(certPath, keyPath, hostname string) error {
	if _, err := os.Stat(certPath); err == nil {
		return nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate TLS key: %w", err)
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hostname, Organization: []string{"ledgermail self-signed"}},
		DNSNames:     []string{hostname, "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(5, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("create TLS certificate: %w", err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode TLS key: %w", err)
	}
	if err := journal.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return err
	}
	return journal.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// CertStore serves a certificate pair that Reload can replace without
// dropping sessions.
type CertStore struct {
	certPath, keyPath string
	mu                sync.RWMutex
	cert              *tls.Certificate
}

// LoadCerts loads the pair.
func LoadCerts(certPath, keyPath string) (*CertStore, error) {
	s := &CertStore{certPath: certPath, keyPath: keyPath}
	return s, s.Reload()
}

// Reload re-reads the pair from disk.
func (s *CertStore) Reload() error {
	c, err := tls.LoadX509KeyPair(s.certPath, s.keyPath)
	if err != nil {
		return fmt.Errorf("load TLS certificate %s / key %s: %w", s.certPath, s.keyPath, err)
	}
	s.mu.Lock()
	s.cert = &c
	s.mu.Unlock()
	return nil
}

// TLSConfig returns a server config that asks the store for the current pair.
func (s *CertStore) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			s.mu.RLock()
			defer s.mu.RUnlock()
			if s.cert == nil {
				return nil, errors.New("no certificate loaded")
			}
			return s.cert, nil
		},
	}
}
