// Command testsummary reads `go test -json` output on stdin, prints each
// package's result and the output of failing tests, and ends with the plain
// closing line "N passed, N failed, N skipped". It exits non-zero when a
// test or package failed, or when no test ran at all: a green run that
// tested nothing must not look like a pass.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

func main() {
	minPassed := 1
	if len(os.Args) > 1 {
		fmt.Sscan(os.Args[1], &minPassed)
	}
	var passed, failed, skipped int
	pkgFailed := map[string]bool{}
	outputs := map[string][]string{} // package/test -> output lines
	var failures []string
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1024*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if err := json.Unmarshal(line, &ev); err != nil || ev.Action == "" {
			// Build errors and other non-JSON lines go straight through.
			fmt.Println(string(line))
			continue
		}
		key := ev.Package + " " + ev.Test
		switch ev.Action {
		case "build-output":
			fmt.Print(ev.Output)
		case "output":
			if ev.Test != "" {
				outputs[key] = append(outputs[key], ev.Output)
			} else if !strings.HasPrefix(ev.Output, "=== ") && !strings.HasPrefix(ev.Output, "--- ") &&
				ev.Output != "PASS\n" && ev.Output != "FAIL\n" && !strings.HasPrefix(ev.Output, "ok ") &&
				!strings.HasPrefix(ev.Output, "FAIL\t") {
				outputs[ev.Package+" "] = append(outputs[ev.Package+" "], ev.Output)
			}
		case "pass":
			if ev.Test != "" {
				passed++
				delete(outputs, key)
			} else {
				fmt.Printf("ok   %-60s %.1fs\n", ev.Package, ev.Elapsed)
				delete(outputs, key)
			}
		case "skip":
			if ev.Test != "" {
				skipped++
				delete(outputs, key)
			} else {
				fmt.Printf("---  %-60s (no test files)\n", ev.Package)
			}
		case "fail":
			if ev.Test != "" {
				failed++
				failures = append(failures, key)
				fmt.Printf("--- FAIL: %s (%s)\n%s", ev.Test, ev.Package, strings.Join(outputs[key], ""))
				delete(outputs, key)
			} else {
				pkgFailed[ev.Package] = true
				fmt.Printf("FAIL %-60s %.1fs\n%s", ev.Package, ev.Elapsed, strings.Join(outputs[key], ""))
			}
		}
	}
	if len(failures) > 0 {
		sort.Strings(failures)
		fmt.Println("failed tests:")
		for _, f := range failures {
			fmt.Println("  " + f)
		}
	}
	fmt.Printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped)
	switch {
	case failed > 0 || len(pkgFailed) > 0:
		os.Exit(1)
	case passed < minPassed:
		fmt.Printf("testsummary: only %d tests passed, want at least %d: treating as failure\n", passed, minPassed)
		os.Exit(1)
	}
}
