package iptables

import (
	"fmt"
	"slices"
	"strings"
)

// Rule is one rule's specification as tokens, in the canonical form
// `iptables -S` prints it, without the leading "-A CHAIN". Rules built by
// this package are written in that form (address matches first, `! -s`,
// "--set-xmark V/M" instead of "--or-mark", "/32" on host addresses, ...),
// so the rules listed back from the kernel compare equal token by token and
// an unchanged chain is never rewritten.
type Rule []string

// Equal reports whether two rules have the same tokens.
func (r Rule) Equal(o Rule) bool { return slices.Equal(r, o) }

// String renders the rule like `iptables -S`: tokens separated by spaces,
// double-quoted with \" and \\ escaped when a token contains a space, a
// quote, a backslash or nothing. iptables quotes a few more strings (a
// comment with a dot, say); rules are compared as tokens, so that only
// shows in dumps.
func (r Rule) String() string {
	var b strings.Builder
	for i, tok := range r {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(quoteToken(tok))
	}
	return b.String()
}

// Line renders the rule as `iptables -S` lists it in chain.
func (r Rule) Line(chain string) string {
	if len(r) == 0 {
		return "-A " + chain
	}
	return "-A " + chain + " " + r.String()
}

// value returns the token after flag ("" if the flag is absent).
func (r Rule) value(flag string) string {
	for i := 0; i+1 < len(r); i++ {
		if r[i] == flag {
			return r[i+1]
		}
	}
	return ""
}

// Target is the rule's jump target ("" if none).
func (r Rule) Target() string { return r.value("-j") }

// Comment is the rule's -m comment text ("" if none).
func (r Rule) Comment() string { return r.value("--comment") }

func quoteToken(tok string) string {
	if tok != "" && !strings.ContainsAny(tok, " \t\"\\'") {
		return tok
	}
	// iptables' save format: double quotes, with \" and \\ escaped.
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(tok) + `"`
}

// parseRuleLine splits one `iptables -S` line "-A CHAIN tokens..." into the
// chain and the rule. ok is false for the policy and chain lines (-P, -N).
func parseRuleLine(line string) (chain string, r Rule, ok bool, err error) {
	toks, err := splitTokens(line)
	if err != nil {
		return "", nil, false, err
	}
	if len(toks) < 2 || toks[0] != "-A" {
		return "", nil, false, nil
	}
	return toks[1], Rule(toks[2:]), true, nil
}

// splitTokens splits a line like a shell would for iptables' output: spaces
// separate tokens, double quotes group, backslash escapes inside quotes.
func splitTokens(line string) ([]string, error) {
	var toks []string
	var cur strings.Builder
	inToken, inQuote := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case inQuote && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			inQuote = !inQuote
			inToken = true
		case !inQuote && (c == ' ' || c == '\t'):
			if inToken {
				toks = append(toks, cur.String())
				cur.Reset()
				inToken = false
			}
		default:
			cur.WriteByte(c)
			inToken = true
		}
	}
	if inQuote {
		return nil, fmt.Errorf("unterminated quote in %q", line)
	}
	if inToken {
		toks = append(toks, cur.String())
	}
	return toks, nil
}
