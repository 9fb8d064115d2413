// Command benchreport turns the JSON of the side-by-side benchmark
// (TestVMSideBySide in cmd/ctagent, make bench-side) into a Markdown table
// and a PNG plot of agent CPU per 1M events and events lost against the
// event rate, per configuration.
//
//	go run ./internal/benchreport -in .cache/bench-side.json -md .cache/bench-side.md -png .cache/bench-side.png
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

func run() error {
	in := flag.String("in", "", "the benchmark's JSON (required)")
	md := flag.String("md", "", "write the Markdown table here (default: stdout)")
	png := flag.String("png", "", "write the plot here (default: no plot)")
	flag.Parse()
	if *in == "" {
		return fmt.Errorf("-in is required")
	}
	f, err := os.Open(*in)
	if err != nil {
		return err
	}
	defer f.Close()
	rep, err := Parse(f)
	if err != nil {
		return fmt.Errorf("%s: %w", *in, err)
	}
	out := os.Stdout
	if *md != "" {
		if out, err = os.Create(*md); err != nil {
			return err
		}
		defer out.Close()
	}
	if err := Markdown(out, rep); err != nil {
		return fmt.Errorf("markdown: %w", err)
	}
	if *png != "" {
		if err := WritePlot(*png, rep); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
	}
	return nil
}
