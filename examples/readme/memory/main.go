package main

import (
	"context"
	"fmt"

	"github.com/onlyone-go/onlyone/locker/memory"
	"github.com/onlyone-go/onlyone/supervise"
)

func main() {
	reg := memory.New() // stands in for the database: one process, many contenders
	job := func(ctx context.Context) error {
		fmt.Println("running the nightly billing, on this node only")
		return nil
	}
	s := &supervise.Supervisor{Restart: supervise.Temporary} // run once
	if err := s.Run(context.Background(), reg.Locker("nightly-billing"), job); err != nil {
		fmt.Println("error:", err)
	}
}
