// Package configs holds the example configuration files and the data the
// binaries carry built in: the official holiday calendars.
package configs

import (
	"embed"
	"io/fs"
)

//go:embed holidays/*.yaml
var holidays embed.FS

// Holidays holds YEAR.yaml, one official holiday calendar a year (see
// pkg/calendar), as shipped in configs/holidays.
var Holidays = func() fs.FS {
	sub, err := fs.Sub(holidays, "holidays")
	if err != nil {
		panic(err)
	}
	return sub
}()
