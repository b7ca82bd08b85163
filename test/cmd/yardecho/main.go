// Command yardecho is the demo's backend and client.
//
//	yardecho serve -name web-0 -tcp :8080 -udp :53
//	    answers every TCP line and every UDP datagram with "<name> <remote address>"
//	yardecho probe -n 20 tcp 10.96.100.10:80
//	    sends n requests, each on a new connection, and prints how many
//	    answers came from each backend (and which source address it saw)
//
// Timeouts bound every request, so a probe always ends.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "probe":
		err = probe(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "yardecho:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: yardecho serve -name NAME [-tcp ADDR] [-udp ADDR] | yardecho probe [-n N] tcp|udp HOST:PORT")
	os.Exit(2)
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	name := fs.String("name", "", "name to answer with")
	tcpAddr := fs.String("tcp", "", "TCP listen address")
	udpAddr := fs.String("udp", "", "UDP listen address")
	fs.Parse(args)
	if *name == "" || (*tcpAddr == "" && *udpAddr == "") {
		return errors.New("serve needs -name and -tcp and/or -udp")
	}
	if *tcpAddr != "" {
		l, err := net.Listen("tcp", *tcpAddr)
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					sc := bufio.NewScanner(c)
					for sc.Scan() {
						fmt.Fprintf(c, "%s %s\n", *name, c.RemoteAddr())
					}
				}()
			}
		}()
	}
	if *udpAddr != "" {
		pc, err := net.ListenPacket("udp", *udpAddr)
		if err != nil {
			return err
		}
		go func() {
			buf := make([]byte, 2048)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo([]byte(fmt.Sprintf("%s %s\n", *name, from)), from)
			}
		}()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return nil
}

func probe(args []string) error {
	fs := flag.NewFlagSet("probe", flag.ExitOnError)
	n := fs.Int("n", 20, "number of requests")
	timeout := fs.Duration("timeout", 2*time.Second, "timeout per request")
	fs.Parse(args)
	if fs.NArg() != 2 || (fs.Arg(0) != "tcp" && fs.Arg(0) != "udp") {
		usage()
	}
	proto, addr := fs.Arg(0), fs.Arg(1)
	counts := map[string]int{}
	sources := map[string]string{}
	failures := map[string]int{}
	for i := 0; i < *n; i++ {
		reply, err := request(proto, addr, *timeout)
		if err != nil {
			failures[shortErr(err)]++
			continue
		}
		fields := strings.Fields(reply)
		if len(fields) != 2 {
			failures["bad reply "+reply]++
			continue
		}
		counts[fields[0]]++
		host, _, _ := net.SplitHostPort(fields[1])
		sources[fields[0]] = host
	}
	names := make([]string, 0, len(counts))
	for k := range counts {
		names = append(names, k)
	}
	sort.Strings(names)
	fmt.Printf("%s %s: %d requests\n", proto, addr, *n)
	for _, k := range names {
		fmt.Printf("  %-10s %3d  %s  (backend saw source %s)\n", k, counts[k], strings.Repeat("#", counts[k]), sources[k])
	}
	for e, c := range failures {
		fmt.Printf("  failed     %3d  %s\n", c, e)
	}
	if len(counts) == 0 {
		return fmt.Errorf("no answer from %s %s", proto, addr)
	}
	return nil
}

func request(proto, addr string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout(proto, addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("hello\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

func shortErr(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return "connection refused"
	}
	return err.Error()
}
