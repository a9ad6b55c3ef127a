package main

import (
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

// foregroundTTY reports whether stdin is a terminal whose foreground
// process group is onlyone's: then the command's group takes the
// terminal, as a shell gives it to a foreground job, so that an
// interactive command can read it (a background group that reads is
// stopped by SIGTTIN).
func foregroundTTY() bool {
	pgrp, err := unix.IoctlGetInt(0, unix.TIOCGPGRP)
	return err == nil && pgrp == syscall.Getpgrp()
}

// takeTTYBack makes onlyone's group the terminal's foreground group
// again. onlyone is then in a background group, where changing the
// foreground group raises SIGTTOU unless it is ignored: it is, for the
// moment of the call only, so that no command inherits it.
func takeTTYBack() {
	signal.Ignore(syscall.SIGTTOU)
	defer signal.Reset(syscall.SIGTTOU)
	_ = unix.IoctlSetPointerInt(0, unix.TIOCSPGRP, syscall.Getpgrp())
}
