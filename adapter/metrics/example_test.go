package metrics_test

import (
	"context"
	"fmt"
	"log"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/onlyone-go/onlyone/adapter/metrics"
	"github.com/onlyone-go/onlyone/locker/memory"
	"github.com/onlyone-go/onlyone/supervise"
)

// A supervisor's hook feeds the collector, then the program's own hook.
func Example() {
	reg := prometheus.NewRegistry()
	col := metrics.New()
	reg.MustRegister(col) // or prometheus.MustRegister(col) for the default registry

	l := memory.New().Locker("nightly-billing") // locker/postgres in production
	s := &supervise.Supervisor{Restart: supervise.Temporary}
	s.OnEvent = func(e supervise.Event) {} // the program's own hook, if any
	s.OnEvent = col.Hook("nightly-billing", s.OnEvent)

	err := s.Run(context.Background(), l, func(ctx context.Context) error {
		fmt.Println("while the job runs:", masterStatus(reg))
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("after it:", masterStatus(reg))
	// Output:
	// while the job runs: leader_election_master_status{name="nightly-billing"} 1
	// after it: leader_election_master_status{name="nightly-billing"} 0
}

// masterStatus reads the gauge as a scrape would show it.
func masterStatus(reg *prometheus.Registry) string {
	mfs, err := reg.Gather()
	if err != nil {
		log.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "leader_election_master_status" {
			m := mf.GetMetric()[0]
			return fmt.Sprintf("%s{%s=%q} %g", mf.GetName(), m.GetLabel()[0].GetName(), m.GetLabel()[0].GetValue(), m.GetGauge().GetValue())
		}
	}
	return "missing"
}
