package mysql_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/connectors/sqltable"
	"github.com/qianzhi/qianzhi/pkg/batch"
)

// typeRow is one row of docs/type-mapping.md for MySQL: a column type, the
// logical type it travels as, the type a created target gets, and values
// (as SQL literals) with the canonical text each must travel as.
type typeRow struct {
	native  string
	logical string
	target  string // COLUMN_TYPE of the created target column
	values  []typeValue
}

type typeValue struct {
	literal string // SQL literal inserted at the source
	text    string // canonical text in the batch; "NULL" for NULL
}

var mysqlTypes = []typeRow{
	{"TINYINT", batch.TypeInt, "bigint(20)", []typeValue{{"-128", "-128"}, {"127", "127"}}},
	{"INT", batch.TypeInt, "bigint(20)", []typeValue{{"-2147483648", "-2147483648"}, {"0", "0"}}},
	{"BIGINT", batch.TypeInt, "bigint(20)", []typeValue{{"-9223372036854775808", "-9223372036854775808"}, {"9223372036854775807", "9223372036854775807"}}},
	{"BIGINT UNSIGNED", batch.TypeInt, "bigint(20)", []typeValue{{"9223372036854775807", "9223372036854775807"}}},
	{"DECIMAL(18,4)", batch.TypeDecimal, "decimal(18,4)", []typeValue{{"-12345678901234.5678", "-12345678901234.5678"}, {"0.0001", "0.0001"}, {"12.5", "12.5000"}}},
	{"DECIMAL(65,30)", batch.TypeDecimal, "decimal(65,30)", []typeValue{{"12345678901234567890123456789012345.123456789012345678901234567891", "12345678901234567890123456789012345.123456789012345678901234567891"}}},
	{"FLOAT", batch.TypeFloat, "float", []typeValue{{"1.5", "1.5"}, {"-3.25e10", "-3.25e+10"}, {"1.2345678", "1.2345678"}, {"16777215", "1.6777215e+07"}}},
	{"DOUBLE", batch.TypeDouble, "double", []typeValue{{"0.1", "0.1"}, {"1.7976931348623157e308", "1.7976931348623157e+308"}, {"-5e-324", "-5e-324"}}},
	{"CHAR(18)", batch.TypeString, "varchar(18)", []typeValue{{"'11010119900307123X'", "11010119900307123X"}}},
	{"VARCHAR(50)", batch.TypeString, "varchar(50)", []typeValue{{"'张三丰'", "张三丰"}, {"''", ""}, {"'😀𠀀'", "😀𠀀"}}},
	{"TEXT", batch.TypeText, "longtext", []typeValue{{"REPEAT('长文本', 7000)", strings.Repeat("长文本", 7000)}, {"''", ""}}},
	{"MEDIUMTEXT", batch.TypeText, "longtext", []typeValue{{"REPEAT('长文本', 300000)", strings.Repeat("长文本", 300000)}}},
	{"LONGTEXT", batch.TypeText, "longtext", []typeValue{{"'多行\\n文本'", "多行\n文本"}}},
	{"JSON", batch.TypeText, "longtext", []typeValue{{`'{"姓名": "李四"}'`, `{"姓名": "李四"}`}}},
	{"ENUM('男','女')", batch.TypeString, "varchar(1)", []typeValue{{"'女'", "女"}}},
	{"VARBINARY(16)", batch.TypeBinary, "varbinary(16)", []typeValue{{"X'00FF00'", "\x00\xff\x00"}}},
	{"BINARY(4)", batch.TypeBinary, "varbinary(4)", []typeValue{{"X'01020304'", "\x01\x02\x03\x04"}}},
	{"BLOB", batch.TypeBlob, "longblob", []typeValue{{"X'00'", "\x00"}, {"REPEAT(X'00FF', 30000)", strings.Repeat("\x00\xff", 30000)}, {"''", ""}}},
	{"LONGBLOB", batch.TypeBlob, "longblob", []typeValue{{"REPEAT(X'00FF', 3000000)", strings.Repeat("\x00\xff", 3000000)}}},
	{"DATE", batch.TypeDate, "date", []typeValue{{"'1949-10-01'", "1949-10-01"}, {"'9999-12-31'", "9999-12-31"}}},
	{"TIME(3)", batch.TypeTime, "time(3)", []typeValue{{"'-838:59:59.000'", "-838:59:59.000"}, {"'12:00:00.5'", "12:00:00.500"}}},
	{"DATETIME", batch.TypeDatetime, "datetime", []typeValue{{"'2026-11-23 08:00:00'", "2026-11-23 08:00:00"}}},
	{"DATETIME(6)", batch.TypeDatetime, "datetime(6)", []typeValue{{"'2026-11-23 08:00:00.000001'", "2026-11-23 08:00:00.000001"}, {"'1000-01-01 00:00:00'", "1000-01-01 00:00:00.000000"}}},
	{"TIMESTAMP(6)", batch.TypeTimestamp, "timestamp(6)", []typeValue{{"'2026-11-23 00:00:00.123456'", "2026-11-23 00:00:00.123456"}}},
	{"YEAR", batch.TypeInt, "bigint(20)", []typeValue{{"2026", "2026"}}},
	{"BIT(8)", batch.TypeBinary, "varbinary(1)", []typeValue{{"b'10100101'", "\xa5"}}},
}

// TestTypeMapping moves one column of every type in the mapping table
// through a real source and sink, and checks the logical type, the exact
// canonical text in the batch, the created target type and the stored
// value read back from the target.
func TestTypeMapping(t *testing.T) {
	for _, tr := range mysqlTypes {
		t.Run(tr.native, func(t *testing.T) {
			p := newPair(t, func(c *sqltable.SourceConfig) {
				c.Table, c.Strategy, c.Watermark = "t", sqltable.StrategySnapshot, ""
			}, func(c *sqltable.SinkConfig) { c.Table = "t" })
			exec(t, p.from, fmt.Sprintf("CREATE TABLE t (id INT PRIMARY KEY, v %s NULL)", tr.native))
			for i, v := range append(tr.values, typeValue{"NULL", "NULL"}) {
				exec(t, p.from, fmt.Sprintf("INSERT INTO t VALUES (%d, %s)", i, v.literal))
			}
			p.open(t)
			out := connectors.Output{Limit: 64 << 20}
			if err := p.src.Next(context.Background(), p.st, &out); err != nil {
				t.Fatal(err)
			}
			col := out.Schema.Columns[1]
			if col.Type != tr.logical {
				t.Fatalf("logical type %q, want %q", col.Type, tr.logical)
			}
			rr := batch.NewRowReader(bytes.NewReader(out.Body), out.Schema)
			for i, v := range append(tr.values, typeValue{"NULL", "NULL"}) {
				r, err := rr.Next()
				if err != nil {
					t.Fatal(err)
				}
				got := "NULL"
				if r.Values[1] != nil {
					got = string(r.Values[1])
				}
				if got != v.text {
					t.Errorf("value %d (%s): travels as %q, want %q", i, v.literal, clip(got), clip(v.text))
				}
			}
			h := batch.Header{Kind: out.Kind, Resource: "r", Grant: "g", Sequence: 1, Schema: out.Schema, Rows: out.Rows}
			if err := p.sink.Apply(context.Background(), &h, bytes.NewReader(out.Body), nil, nil); err != nil {
				t.Fatal(err)
			}
			var typ string
			p.to.QueryRow(`SELECT COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 't' AND COLUMN_NAME = 'v'`).Scan(&typ)
			if typ != tr.target {
				t.Errorf("created target column is %s, want %s", typ, tr.target)
			}
			// The stored values agree byte for byte (as the server prints them).
			equalTables(t, p.from, p.to, "t")
		})
	}
}

func clip(s string) string {
	if len(s) > 60 {
		return fmt.Sprintf("%s…(%d bytes)", s[:60], len(s))
	}
	return s
}
