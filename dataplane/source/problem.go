package source

import "fmt"

// Reasons of a ManifestProblem: short, stable tokens meant as metric labels.
const (
	// ReasonReadError: the directory or a file could not be read.
	ReasonReadError = "read-error"
	// ReasonParseError: a file is not valid YAML or JSON. The file's
	// objects stay as last accepted until it parses again.
	ReasonParseError = "parse-error"
	// ReasonDecodeError: a document is not a Kubernetes object of a known
	// shape (no kind, wrong field types, unknown fields).
	ReasonDecodeError = "decode-error"
	// ReasonUnsupportedVersion: a supported kind in another apiVersion
	// (e.g. discovery.k8s.io/v1beta1 EndpointSlice).
	ReasonUnsupportedVersion = "unsupported-api-version"
	// ReasonInvalidObject: an object failed validation.
	ReasonInvalidObject = "invalid-object"
	// ReasonMissingServiceName: an EndpointSlice lacks the
	// kubernetes.io/service-name label, so it belongs to no Service.
	ReasonMissingServiceName = "missing-service-name-label"
	// ReasonDuplicateObject: an object (kind, namespace, name) is defined
	// again by a later file (in file name order) or later in the same file.
	ReasonDuplicateObject = "duplicate-object"
)

// ManifestProblem is a manifest RunManifests rejected, entirely or in part.
type ManifestProblem struct {
	// File is the path of the file, or of the directory for
	// directory-level problems.
	File string
	// Object names the object ("Service demo/web") when the problem is
	// about one object; it is "" for problems of the whole file.
	Object string
	Reason string
	Detail string
	// KeptPrevious means the last accepted version of the file's objects
	// (or of this object) stays in effect instead of being deleted.
	KeptPrevious bool
}

func (p ManifestProblem) String() string {
	where := p.File
	if p.Object != "" {
		where += ": " + p.Object
	}
	return fmt.Sprintf("%s: %s: %s", where, p.Reason, p.Detail)
}
