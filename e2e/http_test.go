package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// httpScript posts to the HTTP edge with Python's standard library and
// prints the status, the Retry-After header and the JSON answer.
const httpScript = `
import base64, json, sys, urllib.request, urllib.error
url, user, password, kind, payload = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
if kind == "json-10mib":
    data = json.dumps({"from": "Alice <alice@example.test>", "to": ["bob@dest.test"], "bcc": ["carol@dest.test"],
        "subject": "with a big attachment", "text": "see attached", "html": "<p>see attached</p>",
        "headers": {"X-Campaign": "q4"},
        "attachments": [{"filename": "big.bin", "content_type": "application/octet-stream",
                         "content_base64": base64.b64encode(bytes(range(256)) * 40960).decode()}]}).encode()
    ctype = "application/json"
elif kind == "json":
    data, ctype = payload.encode(), "application/json"
else:
    data, ctype = payload.encode(), "message/rfc822"
req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": ctype})
if user:
    req.add_header("Authorization", "Basic " + base64.b64encode((user + ":" + password).encode()).decode())
try:
    with urllib.request.urlopen(req, timeout=120) as r:
        print(r.status, r.headers.get("Retry-After") or "-", r.read().decode().strip())
except urllib.error.HTTPError as e:
    print(e.code, e.headers.get("Retry-After") or "-", e.read().decode().strip())
`

type httpAnswer struct {
	status     int
	retryAfter string
	body       map[string]string
}

func postHTTP(t *testing.T, s *server, path, user, password, kind, payload string) httpAnswer {
	t.Helper()
	out := strings.TrimSpace(python(t, httpScript, "http://"+s.http+path, user, password, kind, payload))
	var a httpAnswer
	var rest string
	if _, err := fmt.Sscanf(out, "%d %s", &a.status, &a.retryAfter); err != nil {
		t.Fatalf("http script printed %q", out)
	}
	if i := strings.IndexByte(out, '{'); i >= 0 {
		rest = out[i:]
		json.Unmarshal([]byte(rest), &a.body)
	}
	return a
}

// The HTTP submission edge: JSON built into MIME (a 10 MiB attachment,
// Bcc delivered but not shown), raw message/rfc822 with curl, and every
// refusal with its status and the field it names.
func TestHTTPSubmission(t *testing.T) {
	need(t, "curl")
	sk := startSink(t, freePort(t))
	s := newServer(t, serverOpts{smarthost: sk.addr})
	s.addUser("alice", "secret", "alice@example.test")
	s.start()

	a := postHTTP(t, s, "/v1/messages", "alice", "secret", "json-10mib", "")
	if a.status != 202 || a.body["id"] == "" {
		t.Fatalf("JSON with a 10 MiB attachment: %+v", a)
	}
	// curl, raw message.
	out, err := exec.Command("curl", "-s", "-w", "\n%{http_code}", "-u", "alice:secret", "-H", "Content-Type: message/rfc822",
		"--data-binary", "From: alice@example.test\r\nSubject: raw via curl\r\n\r\nhello\r\n",
		"http://"+s.http+"/v1/messages?from=alice@example.test&to=dave@dest.test").CombinedOutput()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), "202") || !strings.Contains(string(out), `"id"`) {
		t.Fatalf("curl raw submission: %v %s", err, out)
	}
	waitDelivered(t, sk, s, "both messages (three recipients)", 2)
	var big, raw string
	for _, m := range sk.messages(t) {
		if strings.Contains(m, "Subject: with a big attachment") {
			big = m
		}
		if strings.Contains(m, "Subject: raw via curl") {
			raw = m
		}
	}
	for _, want := range []string{"X-Rcpt-Args: <bob@dest.test>", "X-Rcpt-Args: <carol@dest.test>", "multipart/mixed", "multipart/alternative",
		"text/html", `filename=big.bin`, "X-Campaign: q4"} {
		if !strings.Contains(big, want) {
			t.Errorf("the JSON message lacks %q", want)
		}
	}
	if !regexp.MustCompile(`From: "?Alice"? <alice@example\.test>`).MatchString(big) {
		t.Errorf("the JSON message's From: is not Alice's")
	}
	if strings.Contains(big, "Bcc:") || len(big) < 10<<20 {
		t.Errorf("Bcc shown, or the attachment is missing (%d bytes)", len(big))
	}
	if !strings.Contains(raw, "X-Rcpt-Args: <dave@dest.test>") || !strings.Contains(raw, "hello") {
		t.Errorf("raw message:\n%s", raw)
	}
	if hist := s.replay("--envelope", a.body["id"]); hist[0]["listener"] != "http/"+s.http || hist[0]["auth_user"] != "alice" {
		t.Errorf("Received event: %v", hist[0])
	}

	for _, c := range []struct {
		name, user, pass, kind, payload string
		status                          int
		field                           string
	}{
		{"no credentials", "", "", "json", `{"from":"alice@example.test","to":["b@dest.test"],"text":"x"}`, 401, ""},
		{"bad password", "alice", "wrong", "json", `{"from":"alice@example.test","to":["b@dest.test"],"text":"x"}`, 401, ""},
		{"malformed JSON", "alice", "secret", "json", `{"from": "alice@example.test", "to": [`, 400, "body"},
		{"unknown field", "alice", "secret", "json", `{"from":"alice@example.test","to":["b@dest.test"],"txt":"x"}`, 400, "txt"},
		{"to not a list", "alice", "secret", "json", `{"from":"alice@example.test","to":"b@dest.test","text":"x"}`, 400, "to"},
		{"bad recipient", "alice", "secret", "json", `{"from":"alice@example.test","to":["not an address"],"text":"x"}`, 400, "to[0]"},
		{"no from", "alice", "secret", "json", `{"to":["b@dest.test"],"text":"x"}`, 400, "from"},
		{"not owned", "alice", "secret", "json", `{"from":"ceo@example.test","to":["b@dest.test"],"text":"x"}`, 403, "from"},
		{"reserved header", "alice", "secret", "json", `{"from":"alice@example.test","to":["b@dest.test"],"text":"x","headers":{"Bcc":"x@y.test"}}`, 400, "headers.Bcc"},
		{"raw without to", "alice", "secret", "raw", "Subject: x\r\n\r\ny\r\n", 400, "to"},
	} {
		path := "/v1/messages"
		if c.kind == "raw" {
			path += "?from=alice@example.test"
		}
		a := postHTTP(t, s, path, c.user, c.pass, c.kind, c.payload)
		if a.status != c.status || a.body["field"] != c.field || a.body["error"] == "" {
			t.Errorf("%s: got %d %v, want %d naming %q", c.name, a.status, a.body, c.status, c.field)
		}
	}
	s.stop()

	// Over max_message_bytes: 413; the journal cannot take it: 503 + Retry-After.
	s.rewrite(func(cfg string) string {
		return strings.Replace(cfg, "[http]\n", "[limits]\nmax_message_bytes = 1000\n[journal]\nmin_free = \"1000000GiB\"\n[http]\n", 1)
	})
	s.start()
	long := fmt.Sprintf(`{"from":"alice@example.test","to":["b@dest.test"],"text":%q}`, strings.Repeat("x", 2000))
	if a := postHTTP(t, s, "/v1/messages", "alice", "secret", "json", long); a.status != 413 {
		t.Errorf("over max_message_bytes: %+v", a)
	}
	if a := postHTTP(t, s, "/v1/messages", "alice", "secret", "json", `{"from":"alice@example.test","to":["b@dest.test"],"text":"x"}`); a.status != 503 || a.retryAfter == "-" {
		t.Errorf("below min_free: %+v", a)
	}
	// The same AUTH-failure throttle as SMTP: then even good credentials
	// get 429 for a while.
	var last httpAnswer
	for i := 0; i < 12 && last.status != 429; i++ {
		last = postHTTP(t, s, "/v1/messages", "alice", "guess", "json", `{"from":"alice@example.test","to":["b@dest.test"],"text":"x"}`)
	}
	if last.status != 429 || last.retryAfter == "-" {
		t.Errorf("repeated bad passwords: %+v", last)
	}
	if a := postHTTP(t, s, "/v1/messages", "alice", "secret", "json", `{"from":"alice@example.test","to":["b@dest.test"],"text":"x"}`); a.status != 429 {
		t.Errorf("good credentials while throttled: %+v", a)
	}
	s.stop()

	// http.tls = true: served with the [tls] certificate.
	s.rewrite(func(cfg string) string {
		return strings.Replace(strings.Replace(cfg, "[http]\n", "[http]\ntls = true\n", 1), "min_free = \"1000000GiB\"", "min_free = 0", 1)
	})
	s.start()
	out, err = exec.Command("curl", "-s", "-k", "-w", "\n%{http_code}", "-u", "alice:secret", "-H", "Content-Type: application/json",
		"--data-binary", `{"from":"alice@example.test","to":["erin@dest.test"],"text":"over TLS"}`, "https://"+s.http+"/v1/messages").CombinedOutput()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), "202") {
		t.Fatalf("HTTPS submission: %v %s", err, out)
	}
}
