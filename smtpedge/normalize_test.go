package smtpedge

import "testing"

func TestSeparateHeader(t *testing.T) {
	for in, want := range map[string]string{
		"Subject: x\r\n\r\nbody\r\n":                   "Subject: x\r\n\r\nbody\r\n",
		"Subject: x\r\nbody text here\r\n":             "Subject: x\r\n\r\nbody text here\r\n",
		"Subject: x\r\n folded\r\nTo: a@b\r\nbody\r\n": "Subject: x\r\n folded\r\nTo: a@b\r\n\r\nbody\r\n",
		"just a body\r\n":                              "\r\njust a body\r\n",
		"Subject: only headers\r\n":                    "Subject: only headers\r\n",
		" starts with a space\r\n":                     "\r\n starts with a space\r\n",
	} {
		if got := string(SeparateHeader([]byte(in))); got != want {
			t.Errorf("SeparateHeader(%q) = %q, want %q", in, got, want)
		}
	}
}
