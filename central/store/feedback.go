package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
)

var feedbackSchema = []string{
	`CREATE TABLE IF NOT EXISTS feedback (
		id TEXT PRIMARY KEY,
		resource TEXT NOT NULL REFERENCES resources(id),
		provider TEXT NOT NULL,
		consumer TEXT NOT NULL,
		record TEXT NOT NULL,
		field TEXT NOT NULL,
		problem TEXT NOT NULL,
		suggestion TEXT NOT NULL DEFAULT '',
		created TEXT NOT NULL,
		deadline TEXT NOT NULL,
		answer TEXT NOT NULL DEFAULT '',
		answered TEXT NOT NULL DEFAULT '',
		late INTEGER NOT NULL DEFAULT 0
	)`,
}

// SubmitFeedback records a consumer's report of an error in a record of a
// resource it holds an active grant for; the provider must answer by
// deadline.
func (s *SQLite) SubmitFeedback(ctx context.Context, consumer string, req api.FeedbackRequest, deadline time.Time) (api.Feedback, error) {
	f := api.Feedback{ID: newID("f-"), Consumer: consumer, FeedbackRequest: req, Created: s.now().UTC(), Deadline: deadline}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		switch {
		case strings.TrimSpace(req.Record) == "":
			return fmt.Errorf("say which record is wrong (--record, e.g. 身份证号=110101…): %w", ErrInvalid)
		case strings.TrimSpace(req.Problem) == "":
			return fmt.Errorf("say what is wrong (--problem): %w", ErrInvalid)
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM grants WHERE resource = ? AND consumer = ? AND status = ? AND (expires = '' OR expires > ?)`,
			req.Resource, consumer, GrantActive, ts(s.now())).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("node %s holds no active grant for %s, so it has no records of it to correct: %w", consumer, req.Resource, ErrInvalid)
		}
		vs, err := s.catalog(ctx, tx, `WHERE resource = ? AND status = ? ORDER BY version DESC LIMIT 1`, req.Resource, CatalogApproved)
		if err != nil {
			return err
		}
		if len(vs) == 1 && req.Field != "" && !vs[0].Entry.HasField(req.Field) {
			return fmt.Errorf("field %q is not in the catalog entry of %s (it lists: %s): %w", req.Field, req.Resource, fieldNames(vs[0].Entry), ErrInvalid)
		}
		if err := tx.QueryRowContext(ctx, `SELECT provider FROM resources WHERE id = ?`, req.Resource).Scan(&f.Provider); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO feedback (id, resource, provider, consumer, record, field, problem, suggestion, created, deadline) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			f.ID, req.Resource, f.Provider, consumer, req.Record, req.Field, req.Problem, req.Suggestion, ts(f.Created), ts(deadline)); err != nil {
			return err
		}
		return s.audit(ctx, tx, consumer, "feedback.submit", f.ID, fmt.Sprintf("resource=%s record=%s field=%s", req.Resource, req.Record, req.Field))
	})
	return f, err
}

// AnswerFeedback records the provider's answer; late is in working days.
func (s *SQLite) AnswerFeedback(ctx context.Context, id, provider, answer string, late int) (api.Feedback, error) {
	var f api.Feedback
	if strings.TrimSpace(answer) == "" {
		return f, fmt.Errorf("an answer needs text (--text): what was corrected, or why the record is right: %w", ErrInvalid)
	}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		fs, err := s.feedback(ctx, tx, `WHERE id = ?`, id)
		if err != nil {
			return err
		}
		if len(fs) == 0 {
			return fmt.Errorf("feedback %s: %w", id, ErrNotFound)
		}
		f = fs[0]
		switch {
		case f.Provider != provider:
			return fmt.Errorf("node %s is not the provider of %s (%s is): %w", provider, f.Resource, f.Provider, ErrInvalid)
		case !f.Answered.IsZero():
			return fmt.Errorf("feedback %s was answered already: %w", id, ErrConflict)
		}
		f.Answer, f.Answered, f.Late = answer, s.now().UTC(), late
		if _, err := tx.ExecContext(ctx, `UPDATE feedback SET answer = ?, answered = ?, late = ? WHERE id = ?`, answer, ts(f.Answered), late, id); err != nil {
			return err
		}
		return s.audit(ctx, tx, provider, "feedback.answer", id, fmt.Sprintf("late=%d", late))
	})
	return f, err
}

func (s *SQLite) feedback(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, where string, args ...any) ([]api.Feedback, error) {
	rows, err := q.QueryContext(ctx, `SELECT id, resource, provider, consumer, record, field, problem, suggestion, created, deadline, answer, answered, late FROM feedback `+where+` ORDER BY created, id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []api.Feedback
	for rows.Next() {
		var f api.Feedback
		var created, deadline, answered string
		if err := rows.Scan(&f.ID, &f.Resource, &f.Provider, &f.Consumer, &f.Record, &f.Field, &f.Problem, &f.Suggestion, &created, &deadline, &f.Answer, &answered, &f.Late); err != nil {
			return nil, err
		}
		f.Created, f.Deadline, f.Answered = parseTS(created), parseTS(deadline), parseTS(answered)
		out = append(out, f)
	}
	return out, rows.Err()
}

// Feedback lists the reports a node takes part in ("" for all); open only
// leaves out the answered ones.
func (s *SQLite) Feedback(ctx context.Context, node string, open bool) ([]api.Feedback, error) {
	where, args := []string{"1 = 1"}, []any{}
	if node != "" {
		where, args = append(where, "(provider = ? OR consumer = ?)"), append(args, node, node)
	}
	if open {
		where = append(where, "answered = ''")
	}
	fs, err := s.feedback(ctx, s.db, "WHERE "+strings.Join(where, " AND "), args...)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return fs, err
}
