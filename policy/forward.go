package policy

import (
	"fmt"
	"regexp"
)

// ForwardRule rewrites recipients that match Pattern (Go regexp) into
// Replace ($1-style groups), like slimta's Forward policy.
type ForwardRule struct {
	Pattern *regexp.Regexp
	Replace string
}

// CompileForward compiles [[policies.forward]] rules, naming a bad one.
func CompileForward(rules [][2]string) ([]ForwardRule, error) {
	out := make([]ForwardRule, 0, len(rules))
	for i, r := range rules {
		re, err := regexp.Compile(r[0])
		if err != nil {
			return nil, fmt.Errorf("policies.forward[%d].pattern %q: %v", i, r[0], err)
		}
		out = append(out, ForwardRule{Pattern: re, Replace: r[1]})
	}
	return out, nil
}

// Forward rewrites each recipient with the first rule that matches it; a
// recipient no rule matches is left alone. Duplicates after rewriting are
// dropped (keeping the first).
func Forward(rules []ForwardRule, rcpts []string) []string {
	if len(rules) == 0 {
		return append([]string(nil), rcpts...)
	}
	seen := map[string]bool{}
	out := make([]string, 0, len(rcpts))
	for _, r := range rcpts {
		for _, rule := range rules {
			if rule.Pattern.MatchString(r) {
				r = rule.Pattern.ReplaceAllString(r, rule.Replace)
				break
			}
		}
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	return out
}
