//go:build tools

// Package tools pins the CoreDNS main package (at its module root) built by
// hack/build-controlplane.sh, so that `go mod tidy` keeps its graph in go.sum.
package tools

import _ "github.com/coredns/coredns"
