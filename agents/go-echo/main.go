// go-echo: a WASI preview 1 command written in Go (GOOS=wasip1), which toka-host runs as the core module it is.
// Each subcommand exercises one thing the host provides, so that its output can be
// compared with `wasmtime run`:
//
//	go-echo args A B ...     prints "args: A B ..."
//	go-echo env              prints "env: K=V" per variable, sorted
//	go-echo cat FILE         copies FILE to stdout
//	go-echo ls DIR           prints the sorted entry names of DIR
//	go-echo write FILE TEXT  writes TEXT to FILE
//	go-echo stdin            copies stdin to stdout
//	go-echo clock            checks the wall clock is after 2020 and the monotonic clock advances
//	go-echo random           checks two 32-byte random reads differ
//	go-echo exit N           exits with status N
package main

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "go-echo: "+format+"\n", a...)
	os.Exit(1)
}

func main() {
	args := os.Args[1:]
	if len(args) == 0 {
		fail("usage: go-echo args|env|cat|ls|write|stdin|clock|random|exit ...")
	}
	switch args[0] {
	case "args":
		fmt.Printf("args: %s\n", strings.Join(args[1:], " "))
	case "env":
		env := os.Environ()
		sort.Strings(env)
		for _, kv := range env {
			fmt.Printf("env: %s\n", kv)
		}
	case "cat":
		data, err := os.ReadFile(args[1])
		if err != nil {
			fail("cat %s: %v", args[1], err)
		}
		os.Stdout.Write(data)
	case "ls":
		entries, err := os.ReadDir(args[1])
		if err != nil {
			fail("ls %s: %v", args[1], err)
		}
		for _, e := range entries {
			fmt.Println(e.Name())
		}
	case "write":
		if err := os.WriteFile(args[1], []byte(args[2]), 0o644); err != nil {
			fail("write %s: %v", args[1], err)
		}
		fmt.Printf("wrote %d bytes\n", len(args[2]))
	case "stdin":
		if _, err := io.Copy(os.Stdout, os.Stdin); err != nil {
			fail("stdin: %v", err)
		}
	case "clock":
		if time.Now().Year() < 2020 {
			fail("wall clock says %v", time.Now())
		}
		start := time.Now()
		for time.Since(start) <= 0 {
		}
		fmt.Println("clock ok")
	case "random":
		a, b := make([]byte, 32), make([]byte, 32)
		if _, err := rand.Read(a); err != nil {
			fail("random: %v", err)
		}
		if _, err := rand.Read(b); err != nil {
			fail("random: %v", err)
		}
		if bytes.Equal(a, b) {
			fail("random: two reads were equal")
		}
		fmt.Println("random ok")
	case "exit":
		code, err := strconv.Atoi(args[1])
		if err != nil {
			fail("exit: %v", err)
		}
		os.Exit(code)
	default:
		fail("unknown subcommand %q", args[0])
	}
}
