// Command pause is the pod sandbox process of the single-node cluster (make cluster):
// it holds the pod's namespaces open, sleeps until SIGTERM/SIGINT and reaps any
// child re-parented to it (it is PID 1 of the pod when the PID namespace is shared).
// The upstream registry.k8s.io/pause image does exactly this; no registry is
// reachable here, so the cluster's sandbox image is this static binary.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for { // reap every exited child; never block
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
