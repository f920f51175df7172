// {{name}}: a WASI preview 1 command in Go, made by `toka-host new command {{name}} --lang go`.
//
// Built by `toka-host build` with GOOS=wasip1 GOARCH=wasm (standard library only) and made a wasi:cli/command
// component. `toka-host run {{name}}.wasm Ada` prints "Hello, Ada!". It sees only what the run grants:
// `--dir HOST::/data:ro` (then os.ReadFile("/data/x")), `--env NAME`, `--allow-net HOST:PORT`, `--inherit-stdin`.
package main

import (
	"fmt"
	"os"
	"strings"
)

func main() {
	name := "world"
	if len(os.Args) > 1 {
		name = strings.Join(os.Args[1:], " ")
	}
	fmt.Printf("Hello, %s!\n", name)
}
