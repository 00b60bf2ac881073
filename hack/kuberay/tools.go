//go:build tools

// Package tools pins the KubeRay operator's main package (at the module root)
// built by hack/build-controlplane.sh, so that `go mod tidy` keeps its graph in go.sum.
package tools

import _ "github.com/ray-project/kuberay/ray-operator"
