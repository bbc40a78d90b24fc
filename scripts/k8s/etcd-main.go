// Command etcd: the etcd server built from go.etcd.io/etcd/server/v3 through a wrapper module
// (the upstream root module's go.mod uses relative replaces, so it cannot be built by version).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
