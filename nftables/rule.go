package nftables

import (
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// rule is one rule switchyard wants in a chain.
type rule struct {
	exprs   []expr.Any
	comment string
	// anons are the anonymous sets and maps the rule's lookups refer to
	// (by name; the set ID is filled in per batch).
	anons []*anonMap
	// text is the rule rendered without the anonymous map's elements,
	// which is what the kernel's copy renders to when it is the same rule
	// (the elements are covered by the comment's digest).
	text string
}

// anonMap is an anonymous constant map (or set, without dataType) bound to
// one rule, through the lookup at exprs[idx].
type anonMap struct {
	name     string
	keyType  nftables.SetDatatype
	dataType nftables.SetDatatype
	isMap    bool
	elems    []nftables.SetElement
	idx      int
}

// newRule renders r for comparisons.
func newRule(f *family, comment string, exprs ...[]expr.Any) rule {
	r := rule{exprs: concat(exprs...), comment: comment}
	r.text = renderRule(f, r.exprs, r.comment, nil, setKeyLen(f))
	return r
}

// ruleTexts returns the texts of rules, for comparing chains.
func ruleTexts(rules []rule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = r.text
	}
	return out
}
