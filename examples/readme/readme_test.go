// Package readme holds the Go snippets of README.md as programs, so that
// go vet compiles them; its test keeps the README and these files equal.
package readme

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestREADMESnippetsCompile(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob("*/main.go")
	sources := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sources[string(b)] = f
	}
	blocks := strings.Split(string(readme), "```go\n")[1:]
	if len(blocks) == 0 {
		t.Fatal("README.md has no Go snippet")
	}
	used := map[string]bool{}
	for i, b := range blocks {
		end := strings.Index(b, "```")
		if end < 0 {
			t.Fatalf("snippet %d is not closed", i+1)
		}
		f, ok := sources[b[:end]]
		if !ok {
			t.Errorf("README snippet %d is not one of %v, which go vet compiles; copy it there:\n%s", i+1, files, b[:end])
		}
		used[f] = true
	}
	for _, f := range files {
		if !used[f] {
			t.Errorf("%s is not in README.md", f)
		}
	}
}
