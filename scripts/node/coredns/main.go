// coredns: CoreDNS with only the plugins the real test node's Corefile uses
// (tests/support/cluster/node_config.py). The full build compiles every plugin and downloads ~2 GB of
// modules; these four need a fraction of that.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/template"
)

func init() {
	// The order of the full build's plugin.cfg, restricted to these plugins.
	dnsserver.Directives = []string{"bind", "errors", "template", "kubernetes"}
}

func main() {
	coremain.Run()
}
