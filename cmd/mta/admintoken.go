package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ledgermail/ledgermail/journal"
)

// adminTokenFile is where the admin API's token is kept when the config
// names none: generated on the first start, mode 0600, read by the CLI.
func (c *Config) adminTokenFile() string { return filepath.Join(c.DataDir, "admin-token") }

// adminToken returns the admin API's token: [admin] token when set, else
// the data directory's admin-token file, created when create is set and
// the file does not exist yet.
func adminToken(cfg Config, create bool) (string, error) {
	if cfg.Admin.Token != "" {
		return cfg.Admin.Token, nil
	}
	path := cfg.adminTokenFile()
	b, err := os.ReadFile(path)
	if err == nil {
		if tok := strings.TrimSpace(string(b)); tok != "" {
			return tok, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read the admin token: %w", err)
	}
	if !create {
		return "", nil
	}
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	tok := hex.EncodeToString(raw)
	if err := journal.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write the admin token: %w", err)
	}
	return tok, nil
}
