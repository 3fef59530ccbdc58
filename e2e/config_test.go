package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

// check-config fails on what serve would fail on (exit 2, naming the key),
// without binding any port.
func TestCheckConfigChecksWhatServeChecks(t *testing.T) {
	dir := t.TempDir()
	for body, key := range map[string]string{
		"[submission]\nlisten = [\"127.0.0.1:99999\"]\n":                          "submission.listen",
		"[submissions]\nlisten = [\"127.0.0.1:abc\"]\n":                           "submissions.listen",
		"[relay]\nmode = \"static\"\nsmarthost = \"127.0.0.1:0\"\n":               "relay.smarthost",
		"[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/k.pem\"\n": "tls.cert",
		"[admin]\nlisten = \"127.0.0.1:70000\"\n":                                 "admin.listen",
	} {
		p := filepath.Join(dir, "c.toml")
		os.WriteFile(p, []byte(fmt.Sprintf("data_dir = %q\n%s", filepath.Join(dir, "data"), body)), 0o644)
		for _, cmd := range [][]string{{"check-config", "-c", p}, {"serve", "-c", p}} {
			_, errs, code := run(t, cmd...)
			if code != 2 || !strings.Contains(errs, key) || strings.Count(strings.TrimSpace(errs), "\n") != 0 {
				t.Errorf("%s with %q: exit %d, %q; want exit 2 naming %s", cmd[0], body, code, errs, key)
			}
		}
	}
}

// Every default documented in docs/CONFIG.md is what `mta check-config`
// prints, and every effective key is documented.
func TestDocumentedDefaultsAreTheCodes(t *testing.T) {
	doc, err := os.ReadFile("../docs/CONFIG.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```toml\n(.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("no toml block in docs/CONFIG.md")
	}
	var documented map[string]any
	if _, err := toml.Decode(string(m[1]), &documented); err != nil {
		t.Fatalf("docs/CONFIG.md's example does not parse: %v", err)
	}
	out, errs, code := run(t, "check-config")
	if code != 0 {
		t.Fatalf("check-config: exit %d %s", code, errs)
	}
	var effective map[string]any
	if _, err := toml.Decode(out, &effective); err != nil {
		t.Fatalf("check-config output does not parse: %v\n%s", err, out)
	}
	docFlat, effFlat := flatten("", documented), flatten("", effective)
	derived := map[string]bool{"hostname": true, "policies.postmaster": true, "cluster.name": true} // from the host name
	var keys []string
	for k := range docFlat {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if derived[k] {
			continue
		}
		e, ok := effFlat[k]
		if !ok {
			t.Errorf("%s is documented but check-config does not print it", k)
			continue
		}
		if !sameValue(docFlat[k], e) {
			t.Errorf("%s: documented %v, code %v", k, docFlat[k], e)
		}
	}
	for k := range effFlat {
		if _, ok := docFlat[k]; !ok {
			t.Errorf("%s is a config key missing from docs/CONFIG.md", k)
		}
	}
}

func flatten(prefix string, m map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		key := k
		if prefix != "" {
			key = prefix + "." + k
		}
		if sub, ok := v.(map[string]any); ok {
			for sk, sv := range flatten(key, sub) {
				out[sk] = sv
			}
			continue
		}
		out[key] = v
	}
	return out
}

// sameValue compares two TOML values, durations by their length.
func sameValue(a, b any) bool {
	if reflect.DeepEqual(a, b) {
		return true
	}
	as, aok := a.(string)
	bs, bok := b.(string)
	if aok && bok {
		da, e1 := time.ParseDuration(as)
		db, e2 := time.ParseDuration(bs)
		return e1 == nil && e2 == nil && da == db
	}
	al, aok := a.([]any)
	bl, bok := b.([]any)
	if aok && bok && len(al) == len(bl) {
		for i := range al {
			if !sameValue(al[i], bl[i]) {
				return false
			}
		}
		return true
	}
	return false
}
