// pause: the init process of every pod sandbox on the real test node. It holds the pod's
// namespaces, reaps orphaned children and exits on SIGINT or SIGTERM. containerd asks for an
// image by this name (registry.k8s.io/pause), which cannot be pulled here, so it is built.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every exited child, so orphans re-parented to the sandbox never linger as zombies.
func reap() {
	for {
		pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
