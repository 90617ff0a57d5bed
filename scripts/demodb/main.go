// Command demodb plays the department applications of `make demo`: it
// creates the provider's SQLite table, changes it the way an application
// would, and compares the provider's table with the consumer's copy.
//
//	demodb init SRC.db          create 人口 with 10,000 rows
//	demodb change SRC.db        insert, update, soft-delete and delete rows
//	demodb compare SRC.db DST.db   print both sides; exit 1 if they differ
//	demodb citizens SRC.db      create 低保对象 with 5 rows (for scripts/governance.sh)
//	demodb show DB TABLE [N]    print the first N rows (default 5)
package main

import (
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	_ "modernc.org/sqlite"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "demodb:", err)
		os.Exit(1)
	}
}

func open(path string) (*sql.DB, error) {
	return sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)")
}

func exec(db *sql.DB, qs ...string) error {
	for _, q := range qs {
		if _, err := db.Exec(q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

const now = `strftime('%Y-%m-%d %H:%M:%f', 'now')`

func run(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: demodb init|change SRC.db, or demodb compare SRC.db DST.db")
	}
	db, err := open(args[1])
	if err != nil {
		return err
	}
	defer db.Close()
	switch args[0] {
	case "init":
		return exec(db, `CREATE TABLE 人口 (
			id INTEGER PRIMARY KEY,
			身份证号 VARCHAR(18) NOT NULL,
			姓名 VARCHAR(20) NOT NULL,
			补贴 DECIMAL_TEXT(12,2),
			备注 TEXT,
			updated_at DATETIME(3) NOT NULL,
			deleted INTEGER NOT NULL DEFAULT 0)`,
			`CREATE INDEX 人口_updated ON 人口 (updated_at, id)`,
			`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
			 INSERT INTO 人口 SELECT i, printf('1101011990%08d', i), '居民' || i, printf('%d.%02d', i % 5000, i % 100),
			   CASE WHEN i % 3 = 0 THEN NULL WHEN i % 3 = 1 THEN '' ELSE '低保户' END, `+now+`, 0 FROM n`)
	case "change":
		return exec(db,
			`INSERT INTO 人口 SELECT id + 10000, 身份证号, '新生儿' || id, '0.00', NULL, `+now+`, 0 FROM 人口 WHERE id <= 100`,
			`UPDATE 人口 SET 姓名 = '改名' || id, 补贴 = '1234.50', updated_at = `+now+` WHERE id BETWEEN 200 AND 249`,
			`UPDATE 人口 SET deleted = 1, updated_at = `+now+` WHERE id BETWEEN 300 AND 319`,
			`DELETE FROM 人口 WHERE id BETWEEN 400 AND 404`)
	case "citizens":
		return exec(db, `CREATE TABLE 低保对象 (
			身份证号 VARCHAR(18) PRIMARY KEY,
			姓名 VARCHAR(20) NOT NULL,
			住址 VARCHAR(100),
			月收入 DECIMAL_TEXT(12,2),
			updated_at DATETIME(3) NOT NULL)`,
			`CREATE INDEX 低保对象_updated ON 低保对象 (updated_at, 身份证号)`,
			`INSERT INTO 低保对象 VALUES
			 ('110101199003078515', '张三丰', '北京市海淀区中关村南大街5号', '1200.00', `+now+`),
			 ('110101198507161234', '李秀英', '北京市朝阳区建国路88号', '980.50', `+now+`),
			 ('11010119781224567X', '王建国', '北京市西城区金融大街1号', '1500.00', `+now+`),
			 ('110101200101019876', '赵丽', '北京市东城区王府井大街9号', '860.00', `+now+`),
			 ('110101196512305555', '孙伟', '北京市丰台区丽泽路3号', '1100.00', `+now+`)`)
	case "show":
		if len(args) < 3 {
			return fmt.Errorf("usage: demodb show DB TABLE [N]")
		}
		n := "5"
		if len(args) > 3 {
			n = args[3]
		}
		return show(db, args[2], n)
	case "compare":
		if len(args) != 3 {
			return fmt.Errorf("usage: demodb compare SRC.db DST.db")
		}
		dst, err := open(args[2])
		if err != nil {
			return err
		}
		defer dst.Close()
		a, err := digest(db, "WHERE deleted = 0")
		if err != nil {
			return err
		}
		b, err := digest(dst, "")
		if err != nil {
			return err
		}
		fmt.Printf("%-10s %8s  %s\n", "SIDE", "ROWS", "SHA-256 OF ALL ROWS (id order)")
		fmt.Printf("%-10s %8d  %s\n", "provider", a.rows, a.sum)
		fmt.Printf("%-10s %8d  %s\n", "consumer", b.rows, b.sum)
		if a != b {
			return fmt.Errorf("the tables differ")
		}
		return nil
	}
	return fmt.Errorf("unknown command %q", args[0])
}

type summary struct {
	rows int
	sum  string
}

// digest hashes every published column of the live rows, NULL told apart
// from the empty string.
func digest(db *sql.DB, where string) (summary, error) {
	rows, err := db.Query(`SELECT id, 身份证号, 姓名, quote(补贴), quote(备注), updated_at FROM 人口 ` + where + ` ORDER BY id`)
	if err != nil {
		return summary{}, err
	}
	defer rows.Close()
	h := sha256.New()
	var s summary
	for rows.Next() {
		var id int64
		var idNo, name, amount, note, ts string
		if err := rows.Scan(&id, &idNo, &name, &amount, &note, &ts); err != nil {
			return s, err
		}
		fmt.Fprintf(h, "%d|%s|%s|%s|%s|%s\n", id, idNo, name, amount, note, ts)
		s.rows++
	}
	s.sum = hex.EncodeToString(h.Sum(nil))[:16]
	return s, rows.Err()
}

// show prints a table's first rows, NULL as NULL.
func show(db *sql.DB, table, n string) error {
	rows, err := db.Query(`SELECT * FROM "` + table + `" LIMIT ` + n)
	if err != nil {
		return err
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, strings.Join(cols, "\t"))
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return err
		}
		out := make([]string, len(cols))
		for i, v := range vals {
			out[i] = v.String
			if !v.Valid {
				out[i] = "NULL"
			}
		}
		fmt.Fprintln(w, strings.Join(out, "\t"))
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return w.Flush()
}
