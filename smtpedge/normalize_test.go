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

// From:/Sender: ownership is checked for authenticated users only.
func TestHeaderOwnership(t *testing.T) {
	o := ownership{required: true}
	hdr := []byte("From: Boss <ceo@corp.test>\r\nSubject: x\r\n")
	if err := o.Validate(StageData, &Transaction{Trusted: true, Header: hdr}); err != nil {
		t.Errorf("trusted submission checked: %v", err)
	}
	alice := &Identity{Name: "alice", Addresses: []string{"alice@corp.test"}}
	if err := o.Validate(StageData, &Transaction{Identity: alice, Header: hdr}); err == nil {
		t.Error("ceo@corp.test passed for alice")
	}
	if err := o.Validate(StageData, &Transaction{Identity: alice, Header: []byte("From: alice@corp.test\r\n")}); err != nil {
		t.Errorf("alice's own From refused: %v", err)
	}
	if err := (ownership{}).Validate(StageData, &Transaction{Identity: alice, Header: hdr}); err != nil {
		t.Errorf("require_sender_ownership = false still checked: %v", err)
	}
}
