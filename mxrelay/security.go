package mxrelay

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/dns"
)

// Security is what a delivery attempt's transport security policy was and
// how it went, for the Attempted event and the TLS counters.
type Security struct {
	// Policy is "mta-sts" or "dane"; "" when none applied.
	Policy string
	// Mode is the MTA-STS policy's mode ("enforce" or "testing").
	Mode string
	// PolicyID is the MTA-STS policy's id.
	PolicyID string
	// Result is "success" or a TLS-RPT result type (RFC 8460 §4.3):
	// starttls-not-supported, certificate-host-mismatch,
	// certificate-expired, certificate-not-trusted, validation-failure,
	// tlsa-invalid, dnssec-invalid, sts-policy-fetch-error,
	// sts-policy-invalid, sts-webpki-invalid.
	Result string
	// Detail says why, when Result is not "success".
	Detail string
}

// TLS-RPT result types used here.
const (
	resultSuccess          = "success"
	resultNoSTARTTLS       = "starttls-not-supported"
	resultHostMismatch     = "certificate-host-mismatch"
	resultExpired          = "certificate-expired"
	resultNotTrusted       = "certificate-not-trusted"
	resultValidationFailed = "validation-failure"
	resultTLSAInvalid      = "tlsa-invalid"
	resultDNSSECInvalid    = "dnssec-invalid"
)

// hostSecurity is what one MX host's connection must satisfy.
type hostSecurity struct {
	Security
	// serverName is the MX host's name: the SNI and the name a certificate
	// must be valid for.
	serverName string
	// require: no delivery without TLS that passes the check (MTA-STS
	// enforce, DANE); otherwise a failure is only reported (testing).
	require bool
	// tlsa are the host's usable DANE records (DANE-TA and DANE-EE); with
	// DANE and none usable, TLS is required but not authenticated.
	tlsa []*dns.TLSA
	// roots verify certificates for MTA-STS (system roots plus tls_ca_file).
	roots *x509.CertPool
}

// poolKey keeps connections opened under a policy apart from the others.
func (h *hostSecurity) poolKey(addr string) string {
	if h == nil || h.Policy == "" {
		return addr
	}
	return addr + "|" + h.Policy + "|" + h.Mode + "|" + h.serverName
}

// verify checks the peer's certificates against the policy and returns the
// TLS-RPT result type of a failure ("" when they pass).
func (h *hostSecurity) verify(cs tls.ConnectionState) (string, error) {
	certs := cs.PeerCertificates
	if len(certs) == 0 {
		return resultValidationFailed, errors.New("no certificate")
	}
	if h.Policy == "dane" {
		if len(h.tlsa) == 0 {
			return "", nil // only unusable records: encryption without authentication
		}
		return daneVerify(certs, h.tlsa, h.serverName)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	// The chain first, then the name: a self-signed certificate is
	// reported as not trusted whatever name it bears.
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: h.roots, Intermediates: inter}); err != nil {
		return webPKIResult(err), err
	}
	if err := certs[0].VerifyHostname(h.serverName); err != nil {
		return resultHostMismatch, err
	}
	return "", nil
}

// webPKIResult maps a certificate verification error to its TLS-RPT type.
func webPKIResult(err error) string {
	var he x509.HostnameError
	var ie x509.CertificateInvalidError
	var ua x509.UnknownAuthorityError
	switch {
	case errors.As(err, &he):
		return resultHostMismatch
	case errors.As(err, &ie) && ie.Reason == x509.Expired:
		return resultExpired
	case errors.As(err, &ua):
		return resultNotTrusted
	}
	return resultValidationFailed
}

// daneVerify checks the chain against the TLSA records (RFC 7672 §3.1):
// DANE-EE (3) matches the leaf and nothing else is checked; DANE-TA (2)
// matches a certificate of the chain, from which the leaf must chain and
// be valid for the MX host name.
func daneVerify(certs []*x509.Certificate, records []*dns.TLSA, host string) (string, error) {
	for _, r := range records {
		if r.Usage == 3 && tlsaMatches(r, certs[0]) {
			return "", nil
		}
	}
	for _, r := range records {
		if r.Usage != 2 {
			continue
		}
		for _, ta := range certs {
			if !tlsaMatches(r, ta) {
				continue
			}
			roots := x509.NewCertPool()
			roots.AddCert(ta)
			inter := x509.NewCertPool()
			for _, c := range certs[1:] {
				inter.AddCert(c)
			}
			if _, err := certs[0].Verify(x509.VerifyOptions{DNSName: host, Roots: roots, Intermediates: inter}); err != nil {
				return webPKIResult(err), fmt.Errorf("DANE-TA: %w", err)
			}
			return "", nil
		}
	}
	return resultValidationFailed, errors.New("no TLSA record matches the certificate chain")
}

func tlsaMatches(r *dns.TLSA, c *x509.Certificate) bool {
	want, err := dns.CertificateToDANE(r.Selector, r.MatchingType, c)
	return err == nil && strings.EqualFold(want, r.Certificate)
}

// usableTLSA keeps the records RFC 7672 §3.1.3 lets SMTP use: DANE-TA(2)
// and DANE-EE(3), selectors 0 and 1, matching types 0, 1 and 2.
func usableTLSA(in *dns.Msg) []*dns.TLSA {
	var out []*dns.TLSA
	for _, rr := range in.Answer {
		t, ok := rr.(*dns.TLSA)
		if !ok || (t.Usage != 2 && t.Usage != 3) || t.Selector > 1 || t.MatchingType > 2 {
			continue
		}
		out = append(out, t)
	}
	return out
}
