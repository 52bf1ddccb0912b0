// Command go-marshal times BuildKit's own Go LLB client (client/llb) marshalling
// a generated linear graph, as a reference point for llbgen's Python marshaller.
//
// The graph alternates an ExecOp (preceded by an AddEnv) and a FileOp mkfile on
// top of a pinned debian image. The Python benchmark builds the identical graph,
// so the terminal digest and the -o output can be compared byte for byte.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"time"

	"github.com/moby/buildkit/client/llb"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/protobuf/proto"
)

const baseImage = "docker.io/library/debian:bookworm@sha256:b5ed2cb4e2e5d8c4b2d3c2b1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1"

// buildGraph returns a fresh state chain of n ops on top of the base image.
// Every call creates new vertices, so no per-vertex marshal cache is shared
// between runs.
func buildGraph(n int) llb.State {
	st := llb.Image(baseImage)
	for i := 0; i < n; i++ {
		if i%2 == 0 {
			cmd := fmt.Sprintf("sh -c 'echo %d > /step'", i)
			st = st.AddEnv("STEP", strconv.Itoa(i)).Run(llb.Shlex(cmd)).Root()
		} else {
			path := fmt.Sprintf("/f%d", i)
			st = st.File(llb.Mkfile(path, 0644, []byte(strconv.Itoa(i))))
		}
	}
	return st
}

func platformOpt() llb.ConstraintsOpt {
	return llb.Platform(ocispecs.Platform{OS: "linux", Architecture: "amd64"})
}

func main() {
	n := flag.Int("n", 10000, "number of ops to generate")
	runs := flag.Int("runs", 5, "number of timed marshal runs")
	out := flag.String("o", "", "write the Definition protobuf of one marshal to this file")
	flag.Parse()

	if *n < 0 || *runs < 1 {
		fmt.Fprintln(os.Stderr, "go-marshal: -n must be >= 0 and -runs >= 1")
		os.Exit(2)
	}

	ctx := context.Background()
	times := make([]float64, 0, *runs)
	var def *llb.Definition

	for r := 0; r < *runs; r++ {
		st := buildGraph(*n)
		runtime.GC()

		start := time.Now()
		d, err := st.Marshal(ctx, platformOpt())
		elapsed := time.Since(start).Seconds()
		if err != nil {
			fmt.Fprintf(os.Stderr, "go-marshal: marshal failed: %v\n", err)
			os.Exit(1)
		}
		def = d
		times = append(times, elapsed)
		fmt.Printf("run %d: %.3fs (ops=%d)\n", r+1, elapsed, len(d.Def))
	}

	if *out != "" {
		// The map of per-op metadata makes plain MarshalVT output depend on
		// Go's map iteration order; deterministic marshalling sorts map keys
		// so the bytes are reproducible and comparable.
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(def.ToPB())
		if err != nil {
			fmt.Fprintf(os.Stderr, "go-marshal: encoding definition: %v\n", err)
			os.Exit(1)
		}
		if err := os.WriteFile(*out, b, 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "go-marshal: %v\n", err)
			os.Exit(1)
		}
		fmt.Printf("wrote %d bytes to %s\n", len(b), *out)
	}

	terminal := ""
	if len(def.Def) > 0 {
		sum := sha256.Sum256(def.Def[len(def.Def)-1])
		terminal = "sha256:" + hex.EncodeToString(sum[:])
	}

	sorted := append([]float64(nil), times...)
	sort.Float64s(sorted)
	var median float64
	if m := len(sorted); m%2 == 1 {
		median = sorted[m/2]
	} else {
		median = (sorted[m/2-1] + sorted[m/2]) / 2
	}

	fmt.Printf("go client/llb: ops=%d best=%.3fs median=%.3fs worst=%.3fs terminal=%s\n",
		len(def.Def), sorted[0], median, sorted[len(sorted)-1], terminal)
}
