// probe: the client (and stand-in server) of clipserve's real-node tests, one static binary in
// an image with no shell, run in pods and driven with `kubectl exec`.
//
//	probe sleep                     idle until SIGTERM (a client pod's main process)
//	probe serve ADDR                answer every path with the pod's hostname
//	probe get URL [COUNT]           GET (COUNT times, a new connection each); print the status,
//	                                X-Clip-Model and body of each; exit 1 unless all were 2xx
//	probe post URL JSON             POST a JSON body; same output and exit status
//	probe resolve NAME              print the addresses NAME resolves to (the pod's DNS)
//	probe api PATH                  GET PATH from the API server as the pod's ServiceAccount,
//	                                verifying its certificate (the in-cluster path an operator uses)
//	probe load [flags] URL JSON     POST JSON steadily until the stop file exists; one JSON line
//	                                per request on stdout
//	probe touch FILE                create FILE (stops a load run)
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

const modelHeader = "X-Clip-Model"

func main() {
	if len(os.Args) < 2 {
		fail("usage: probe sleep|serve|get|post|resolve|load|touch ...")
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "sleep":
		waitForSignal()
	case "serve":
		serve(arg(args, 0))
	case "get":
		count := 1
		if len(args) > 1 {
			if _, err := fmt.Sscan(args[1], &count); err != nil {
				fail("COUNT: " + err.Error())
			}
		}
		code := 0
		for i := 0; i < count; i++ {
			code = max(code, once(http.MethodGet, arg(args, 0), ""))
		}
		os.Exit(code)
	case "post":
		os.Exit(once(http.MethodPost, arg(args, 0), arg(args, 1)))
	case "resolve":
		addrs, err := net.DefaultResolver.LookupHost(context.Background(), arg(args, 0))
		if err != nil {
			fail(err.Error())
		}
		for _, a := range addrs {
			fmt.Println(a)
		}
	case "api":
		os.Exit(api(arg(args, 0)))
	case "load":
		load(args)
	case "touch":
		if err := os.WriteFile(arg(args, 0), nil, 0o644); err != nil {
			fail(err.Error())
		}
	default:
		fail("unknown command " + os.Args[1])
	}
}

func arg(args []string, i int) string {
	if i >= len(args) {
		fail(fmt.Sprintf("missing argument %d", i+1))
	}
	return args[i]
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "probe:", msg)
	os.Exit(2)
}

func waitForSignal() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	<-signals
}

func serve(addr string) {
	host, _ := os.Hostname()
	handler := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, host)
	})
	server := &http.Server{Addr: addr, Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	fmt.Println("serving on", addr)
	go func() {
		waitForSignal()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = server.Shutdown(ctx)
	}()
	if err := server.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		fail(err.Error())
	}
}

func once(method, url, body string) int {
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	req, err := http.NewRequest(method, url, bytes.NewBufferString(body))
	if err != nil {
		fail(err.Error())
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	return send(client, req)
}

func send(client *http.Client, req *http.Request) int {
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		return 1
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	fmt.Printf("%d %s\n%s\n", resp.StatusCode, resp.Header.Get(modelHeader), bytes.TrimRight(data, "\n"))
	if resp.StatusCode/100 != 2 {
		return 1
	}
	return 0
}

const serviceAccount = "/var/run/secrets/kubernetes.io/serviceaccount/"

// api calls the API server the way client libraries do in a pod: the KUBERNETES_SERVICE_* address,
// the mounted CA and token.
func api(path string) int {
	ca, err := os.ReadFile(serviceAccount + "ca.crt")
	if err != nil {
		fail(err.Error())
	}
	token, err := os.ReadFile(serviceAccount + "token")
	if err != nil {
		fail(err.Error())
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	host := net.JoinHostPort(os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT"))
	req, err := http.NewRequest(http.MethodGet, "https://"+host+path, nil)
	if err != nil {
		fail(err.Error())
	}
	req.Header.Set("Authorization", "Bearer "+string(bytes.TrimSpace(token)))
	return send(client, req)
}

// result is one request of a load run, as the tests read it.
type result struct {
	Worker int     `json:"worker"`
	Start  float64 `json:"start"` // unix seconds when the request was sent
	Ms     float64 `json:"ms"`
	Status int     `json:"status"` // 0 when no response came back
	Model  string  `json:"model"`
	Items  int     `json:"items"` // top-level elements of a JSON array body, else -1
	Error  string  `json:"error,omitempty"`
}

func load(args []string) {
	flags := flag.NewFlagSet("load", flag.ExitOnError)
	workers := flags.Int("workers", 2, "requests in flight at once")
	interval := flags.Duration("interval", 100*time.Millisecond, "pause after each request, per worker")
	stop := flags.String("stop", "/tmp/stop", "stop once this file exists")
	keepAlive := flags.Bool("keepalive", true, "reuse connections (as most HTTP clients do)")
	timeout := flags.Duration("timeout", 30*time.Second, "a request slower than this counts as failed")
	_ = flags.Parse(args)
	url, body := arg(flags.Args(), 0), arg(flags.Args(), 1)
	client := &http.Client{
		Timeout:   *timeout,
		Transport: &http.Transport{DisableKeepAlives: !*keepAlive, MaxIdleConnsPerHost: *workers},
	}
	_ = os.Remove(*stop)
	var out sync.Mutex
	encoder := json.NewEncoder(os.Stdout)
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func(worker int) {
			defer wg.Done()
			for !exists(*stop) {
				r := post(client, url, body)
				r.Worker = worker
				out.Lock()
				_ = encoder.Encode(r)
				out.Unlock()
				time.Sleep(*interval)
			}
		}(w)
	}
	wg.Wait()
}

func post(client *http.Client, url, body string) result {
	start := time.Now()
	r := result{Start: float64(start.UnixNano()) / 1e9, Items: -1}
	resp, err := client.Post(url, "application/json", bytes.NewBufferString(body))
	if err == nil {
		var data []byte
		data, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		r.Status, r.Model = resp.StatusCode, resp.Header.Get(modelHeader)
		var array []json.RawMessage
		if json.Unmarshal(data, &array) == nil {
			r.Items = len(array)
		}
	}
	if err != nil {
		r.Error = err.Error()
	}
	r.Ms = float64(time.Since(start).Microseconds()) / 1e3
	return r
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
