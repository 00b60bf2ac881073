//go:build tools

// Package tools pins the Kueue controller manager's main package (cmd/kueue) built by
// hack/build-controlplane.sh cluster, so that `go mod tidy` keeps its graph in go.sum.
package tools

import _ "sigs.k8s.io/kueue/cmd/kueue"
