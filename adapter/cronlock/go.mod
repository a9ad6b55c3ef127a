module github.com/onlyone-go/onlyone/adapter/cronlock

go 1.26.0

replace github.com/onlyone-go/onlyone => ../..

require github.com/robfig/cron/v3 v3.0.1 // indirect
