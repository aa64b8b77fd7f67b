-- Why each policy version was set (a comment, or "rollback to version N").
ALTER TABLE policies ADD COLUMN comment TEXT NOT NULL DEFAULT '';
