package postgres_test

// helperEnv names the environment variable that turns the test binary
// into a helper process (see helperMain).
const helperEnv = "ONLYONE_PG_HELPER"

func helperMain(mode string) int { return 2 }
