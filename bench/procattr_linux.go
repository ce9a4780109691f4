package main

import "syscall"

// childAttr makes the kernel kill the relay child if the bench dies first
// (even by SIGKILL, when no defer runs).
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
