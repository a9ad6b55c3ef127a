package main

import (
	"net/url"
	"regexp"
	"strings"
)

// keywordPassword finds password=... in a keyword/value connection string.
var keywordPassword = regexp.MustCompile(`password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)`)

// redactPassword removes the password of dsn from msg, for a dsn that may
// not even parse.
func redactPassword(dsn, msg string) string {
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			msg = strings.ReplaceAll(msg, p, "REDACTED")
			msg = strings.ReplaceAll(msg, url.QueryEscape(p), "REDACTED")
		}
	}
	for _, m := range keywordPassword.FindAllStringSubmatch(dsn, -1) {
		p := strings.Trim(m[1], "'")
		if p != "" {
			msg = strings.ReplaceAll(msg, p, "REDACTED")
		}
	}
	// A URL the parser gave up on: hide whatever sits between ':' and '@'.
	return regexp.MustCompile(`(://[^:/@]*:)[^@]*@`).ReplaceAllString(msg, "${1}REDACTED@")
}
