# failures.awk prints, from the output of go test, only what says why
# tests failed: each "--- FAIL" line with the failed test's own log under
# it (indented), data race reports, panics, build errors and the FAIL
# lines. make test prints it at the end, where a CI log's tail shows it:
# the tests' other output (a supervisor's log lines, say) can run to
# thousands of lines and bury the reason.
#
#	awk -f internal/testlog/failures.awk test.log

/^WARNING: DATA RACE/ { block = "race" }
block == "race" { print; if (/^==================/) block = ""; next }

/^panic: / || /^fatal error: / { block = "panic"; lines = 0 }
block == "panic" { if (lines++ < 80) print; if (/^(FAIL|ok)[ \t]/) block = ""; next }

/^[ \t]*--- FAIL/ { block = "fail"; print; next }
block == "fail" && /^[ \t]/ { print; next }
/^(=== |--- |ok[ \t]|PASS$|\?[ \t])/ { block = "" }

/^FAIL/ || /^# / || /^[^ \t]+\.go:[0-9]+:[0-9]+: / || /race detected during execution/ || /^make test: / { print }
