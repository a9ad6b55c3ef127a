module github.com/onlyone-go/onlyone/examples/readme/gocron

go 1.26.0

replace github.com/onlyone-go/onlyone => ../../..

replace github.com/onlyone-go/onlyone/adapter/gocronlock => ../../../adapter/gocronlock

require (
	github.com/go-co-op/gocron/v2 v2.21.2
	github.com/jackc/pgx/v5 v5.12.0
	github.com/onlyone-go/onlyone v0.0.0-00010101000000-000000000000
	github.com/onlyone-go/onlyone/adapter/gocronlock v0.0.0-00010101000000-000000000000
)

require (
	github.com/google/uuid v1.6.0 // indirect
	github.com/jackc/pgpassfile v1.0.0 // indirect
	github.com/jackc/pgservicefile v0.0.0-20240606120523-5a60cdf6a761 // indirect
	github.com/jackc/puddle/v2 v2.2.3 // indirect
	github.com/jonboulle/clockwork v0.5.0 // indirect
	github.com/robfig/cron/v3 v3.0.1 // indirect
	golang.org/x/sync v0.22.0 // indirect
	golang.org/x/text v0.41.0 // indirect
)
