package main

import (
	"flag"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
)

// printFlags prints fs's flags as the README writes them: --name NAME.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		if arg != "" && !isBool(f) {
			arg = " " + arg
		} else {
			arg = ""
		}
		dash := "--"
		if len(f.Name) == 1 {
			dash = "-"
		}
		fmt.Fprintf(w, "  %s%s%s\n    \t%s", dash, f.Name, arg, strings.ReplaceAll(usage, "\n", "\n    \t"))
		if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" && f.DefValue != "0s" {
			fmt.Fprintf(w, " (default %s)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
}

func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// version prints onlyone's version, from the build information.
func version(w io.Writer) int {
	v, rev := "(devel)", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					rev += "+dirty"
				}
			}
		}
		fmt.Fprintln(w, strings.Join(strings.Fields("onlyone "+v+" "+rev+" "+bi.GoVersion), " "))
		return 0
	}
	fmt.Fprintf(w, "onlyone %s\n", v)
	return 0
}
