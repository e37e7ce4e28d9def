// estargz-tool: a tiny test helper around the stargz-snapshotter estargz package
// (Debian's golang-github-containerd-stargz-snapshotter-dev), the third-party
// eStargz producer and validator of ocifs's tests.
//
//	estargz-tool build [-chunk-size N] [-level N] [-prioritize a,b] IN.tar OUT.blob
//	    converts a tar (or tar.gz) layer; prints {"tocDigest","diffID","size"} as JSON.
//	estargz-tool verify BLOB TOCDIGEST
//	    opens the blob and checks its TOC against TOCDIGEST (estargz.Open, VerifyTOC).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

func main() {
	// estargz.Build splits the work by GOMAXPROCS: one part keeps the output reproducible.
	runtime.GOMAXPROCS(1)
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: estargz-tool build|verify ..."))
	}
	var err error
	switch os.Args[1] {
	case "build":
		err = build(os.Args[2:])
	case "verify":
		err = verify(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "estargz-tool:", err)
	os.Exit(1)
}

func build(args []string) error {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	chunkSize := fs.Int("chunk-size", 0, "chunk size in bytes (0: the package default, 4 MiB)")
	level := fs.Int("level", 9, "gzip compression level")
	prioritize := fs.String("prioritize", "", "comma-separated paths to place before the prefetch landmark")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return fmt.Errorf("build: want IN.tar OUT.blob")
	}
	in, err := os.Open(fs.Arg(0))
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	opts := []estargz.Option{estargz.WithCompressionLevel(*level)}
	if *chunkSize > 0 {
		opts = append(opts, estargz.WithChunkSize(*chunkSize))
	}
	if *prioritize != "" {
		opts = append(opts, estargz.WithPrioritizedFiles(strings.Split(*prioritize, ",")))
	}
	blob, err := estargz.Build(io.NewSectionReader(in, 0, st.Size()), opts...)
	if err != nil {
		return err
	}
	defer blob.Close()
	out, err := os.Create(fs.Arg(1))
	if err != nil {
		return err
	}
	n, err := io.Copy(out, blob)
	if err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]interface{}{
		"tocDigest": blob.TOCDigest().String(),
		"diffID":    blob.DiffID().String(),
		"size":      n,
	})
}

func verify(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("verify: want BLOB TOCDIGEST")
	}
	f, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	want, err := digest.Parse(args[1])
	if err != nil {
		return err
	}
	r, err := estargz.Open(io.NewSectionReader(f, 0, st.Size()))
	if err != nil {
		return err
	}
	if _, err := r.VerifyTOC(want); err != nil {
		return err
	}
	fmt.Println("ok")
	return nil
}
