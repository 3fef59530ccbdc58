package journal

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteFile atomically replaces path with data: it writes a temporary file
// beside it, fsyncs it, renames it over path and fsyncs the directory. It is
// the one way other packages write small files in the data directory (the
// users file, the generated certificate).
func WriteFile(path string, data []byte, perm os.FileMode) error {
	return writeFileFrom(path, perm, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// writeFileFrom is WriteFile with the content written by fill into the
// temporary file (a failure leaves path as it was).
func writeFileFrom(path string, perm os.FileMode, fill func(*os.File) error) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := fill(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
