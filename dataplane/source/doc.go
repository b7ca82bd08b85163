// Package source feeds the change tracker (dataplane.Tracker) from where
// Services, EndpointSlices and the Node come from: the Kubernetes API
// (RunInformers) or a directory of manifests for standalone use
// (RunManifests).
//
// Sources only translate "what exists" into Handler calls; they never build
// the model. After each batch of Handler calls a source invokes notify so
// the agent can schedule a sync; the sync loop's runner merges bursts of
// notifications, so calling it often is cheap.
package source
