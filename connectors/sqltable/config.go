package sqltable

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
)

// Strategies of change tracking.
const (
	// Snapshot copies the whole table once, in key order.
	StrategySnapshot = "snapshot"
	// Incremental copies the whole table once, then every row whose
	// watermark column moved past the last one sent.
	StrategyIncremental = "incremental"
)

// Register makes a dialect available as a connector kind. A dialect with
// a method AppliedTable() string names its default applied table (Oracle:
// QZ_APPLIED, as unquoted names are upper case there).
func Register(d Dialect) {
	applied := "qz_applied"
	if a, ok := d.(interface{ AppliedTable() string }); ok {
		applied = a.AppliedTable()
	}
	connectors.Register(connectors.Kind{
		Name:       d.Name(),
		SourceConf: func() connectors.SourceConfig { return NewSourceConfig(d) },
		SinkConf:   func() connectors.SinkConfig { return &SinkConfig{dialect: d, AppliedTable: applied, Parallel: 2} },
	})
}

// Conn holds the connection settings both sides share.
type Conn struct {
	// DSN is the driver's connection string (see the kind's docs).
	DSN string `yaml:"dsn"`
	// DSNFile names a file holding the DSN instead, so the password
	// stays out of the config (e.g. a systemd credential).
	DSNFile string `yaml:"dsn_file"`
}

func (c *Conn) validate() []error {
	switch {
	case c.DSN == "" && c.DSNFile == "":
		return []error{errors.New("dsn (or dsn_file) is required: how to connect to the database")}
	case c.DSN != "" && c.DSNFile != "":
		return []error{errors.New("give dsn or dsn_file, not both")}
	}
	return nil
}

// open connects to the database. A dialect with a method DSNHint() string
// says what to check when that fails.
func (c *Conn) open(d Dialect) (*sql.DB, error) {
	dsn := c.DSN
	if c.DSNFile != "" {
		b, err := os.ReadFile(c.DSNFile)
		if err != nil {
			return nil, fmt.Errorf("dsn_file: %w", err)
		}
		dsn = strings.TrimSpace(string(b))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := d.Open(ctx, dsn)
	if err != nil {
		hint := "host, port, user, password and database"
		if h, ok := d.(interface{ DSNHint() string }); ok {
			hint = h.DSNHint()
		}
		return nil, fmt.Errorf("connect to %s: %w (check dsn: %s)", d.Name(), err, hint)
	}
	return db, nil
}

// SoftDelete names a column that marks rows as deleted.
type SoftDelete struct {
	Column string `yaml:"column"`
	// Value is what the column holds for a deleted row, as text ("1",
	// "Y", "true"); any other value, or NULL, is a live row.
	Value string `yaml:"value"`
}

// SourceConfig is a provider's table resource.
type SourceConfig struct {
	connectors.Common `yaml:",inline"`
	Conn              `yaml:",inline"`
	// Table is the table to publish (schema.table allowed).
	Table string `yaml:"table"`
	// Query is a SELECT to publish instead of a table; it needs Key.
	Query string `yaml:"query"`
	// Key names the columns identifying a row; default the primary key.
	Key []string `yaml:"key"`
	// Columns to publish; default all. The key columns must be among them.
	Columns []string `yaml:"columns"`
	// Strategy is snapshot or incremental.
	Strategy string `yaml:"strategy"`
	// Watermark is the column (a time or a number that grows with every
	// change) incremental extraction follows.
	Watermark string `yaml:"watermark"`
	// Lag keeps incremental reads this far behind the database's clock,
	// so rows of transactions still committing are not skipped.
	Lag time.Duration `yaml:"lag"`
	// TimeZone is the zone in which the watermark column's wall-clock
	// values are written (MySQL DATETIME), e.g. "+08:00"; default the
	// server's.
	TimeZone string `yaml:"time_zone"`
	// SoftDelete turns rows marked deleted into deletes at consumers.
	SoftDelete *SoftDelete `yaml:"soft_delete"`
	// Poll is how often incremental extraction looks for changes.
	Poll time.Duration `yaml:"poll"`
	// PageRows is the number of rows read by one query.
	PageRows int `yaml:"page_rows"`

	dialect Dialect
}

// NewSourceConfig returns the defaults for a dialect.
func NewSourceConfig(d Dialect) *SourceConfig {
	return &SourceConfig{dialect: d, Strategy: StrategyIncremental, Lag: 5 * time.Second, Poll: time.Second, PageRows: 5000}
}

// Validate checks the entry without connecting; OpenSource checks it
// against the database.
func (c *SourceConfig) Validate() error {
	errs := c.Conn.validate()
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch {
	case c.Table == "" && c.Query == "":
		add("table (or query) is required: what to publish")
	case c.Table != "" && c.Query != "":
		add("give table or query, not both")
	case c.Query != "" && len(c.Key) == 0:
		add("a query needs key: the columns that identify its rows")
	case c.Query != "" && !strings.HasPrefix(strings.ToUpper(strings.TrimSpace(c.Query)), "SELECT"):
		add("query must be a SELECT")
	}
	switch c.Strategy {
	case StrategySnapshot:
	case StrategyIncremental:
		if c.Watermark == "" {
			add("strategy incremental needs watermark: a column that moves forward with every change (e.g. updated_at)")
		}
	default:
		add("strategy %q: use snapshot or incremental", c.Strategy)
	}
	if c.Lag < 0 {
		add("lag must not be negative")
	}
	if c.Poll < 100*time.Millisecond {
		add("poll must be at least 100ms")
	}
	if c.PageRows < 1 || c.PageRows > 1000000 {
		add("page_rows %d is out of range: 1 to 1000000", c.PageRows)
	}
	if c.SoftDelete != nil && (c.SoftDelete.Column == "" || c.SoftDelete.Value == "") {
		add("soft_delete needs column and value")
	}
	if len(c.Columns) > 0 {
		have := map[string]bool{}
		for _, col := range c.Columns {
			have[col] = true
		}
		for _, k := range c.Key {
			if !have[k] {
				add("key column %q must be among columns", k)
			}
		}
	}
	return errors.Join(errs...)
}

// OpenSource connects and checks the table.
func (c *SourceConfig) OpenSource(log *slog.Logger) (connectors.Source, error) {
	return openSource(c, log)
}

// SinkConfig is a consumer's target table.
type SinkConfig struct {
	connectors.Common `yaml:",inline"`
	Conn              `yaml:",inline"`
	// Table is the target table; default the resource's table name.
	Table string `yaml:"table"`
	// CreateTable creates the target, with mapped types, when missing.
	CreateTable bool `yaml:"create_table"`
	// AppliedTable records the last applied sequence of each grant in the
	// target database, in the same transaction as the rows.
	AppliedTable string `yaml:"applied_table"`
	// Parallel is how many connections load one snapshot batch at once,
	// where the engine bulk loads (MySQL); 1 loads each in one.
	Parallel int `yaml:"parallel"`

	dialect Dialect
}

// Validate checks the entry without connecting.
func (c *SinkConfig) Validate() error {
	errs := c.Conn.validate()
	if c.Table == "" {
		errs = append(errs, errors.New("table is required: where received rows go"))
	}
	if c.AppliedTable == "" {
		errs = append(errs, errors.New("applied_table must not be empty"))
	}
	if c.Parallel < 1 || c.Parallel > 16 {
		errs = append(errs, fmt.Errorf("parallel %d: use 1 to 16 connections", c.Parallel))
	}
	return errors.Join(errs...)
}

// OpenSink connects to the target database.
func (c *SinkConfig) OpenSink(log *slog.Logger) (connectors.Sink, error) {
	return openSink(c, log)
}
